"""The functions chunk tasks run: evaluate a chunk's windows, hand out parts, merge and store a chunk.

Every function takes plain values and returns plain values (picklable), so the same graph runs
on threads, worker processes or a dask.distributed cluster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.mask_store import MaskStore
from ..scene import Scene
from ..stitch import Evaluation, Part, evaluate_windows, merge_chunk, weights_tensor
from ..tiling import ChunkGrid, WindowGrid
from .plan import ChunkTask, Index
from .workers import PredictorFactory, predictor_for

__all__ = ["RunSpec", "evaluate_chunk", "evaluation_counts", "merge_and_store", "part_for"]


@dataclass(frozen=True)
class RunSpec:
    """What every task of one run shares (small: no pixels, no weights)."""

    grid: WindowGrid
    chunks: ChunkGrid
    blend: str
    num_classes: int
    factory: PredictorFactory
    store: Path
    fingerprint: str
    save_scores: bool
    to_host: bool  # ship pieces through host memory (worker processes, clusters)


def evaluate_chunk(scene: Scene, task: ChunkTask, run: RunSpec) -> Evaluation:
    """Read the task's region, run its windows and cut their contributions per target chunk."""
    assert task.read is not None
    data, valid = scene.read(task.read)
    with predictor_for(run.factory) as predictor, torch.inference_mode():
        weights = weights_tensor(run.grid.tile, run.blend, predictor.device)
        return evaluate_windows(task.evaluates, run.grid, run.chunks, task.targets, task.read, data, valid,
                                predictor, weights, own=task.index if task.merge else None,
                                to_host=run.to_host)


def part_for(evaluation: Evaluation, target: Index) -> Part:
    """The part of an evaluation that goes to ``target`` (a task of its own, so only it moves)."""
    return evaluation.parts[target]


def evaluation_counts(evaluation: Evaluation) -> dict[str, Any]:
    return {"evaluated": [list(i) for i in evaluation.evaluated], "skipped": evaluation.skipped}


@lru_cache(maxsize=4)
def _store(path: Path, fingerprint: str) -> MaskStore:
    store = MaskStore.open(path, mode="r+")
    if store.fingerprint != fingerprint:
        raise RuntimeError(f"mask store {path} belongs to run {store.fingerprint}, not {fingerprint}")
    return store


def merge_and_store(task: ChunkTask, parts: list[Part], run: RunSpec) -> dict[str, Any]:
    """Merge a chunk from its parts, write it to the store and record it as complete."""
    t0 = time.perf_counter()
    device = next((p.weighted.device for part in parts for p in part.pieces if p.weighted is not None),
                  torch.device("cpu"))
    with torch.inference_mode():
        weights = weights_tensor(run.grid.tile, run.blend, device)
        chunk = merge_chunk(task.index, task.box, parts, weights, run.num_classes, keep_scores=run.save_scores)
    del parts
    store = _store(run.store, run.fingerprint)
    store.write(task.box, chunk.labels, chunk.scores, chunk.valid)
    record = {"index": list(task.index), "box": [list(task.box.start), list(task.box.stop)],
              "valid_pixels": int(np.count_nonzero(chunk.valid)),
              "seconds": round(time.perf_counter() - t0, 4)}
    store.mark_done(task.index, record)
    return record
