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

from .._failpoints import failpoint
from .._memory import release_free_memory
from ..io.mask_store import MaskStore
from ..scene import Scene
from ..stitch import Evaluation, Part, evaluate_windows, merge_chunk, weights_tensor
from ..tiling import ChunkGrid, WindowGrid
from . import spill
from .plan import ChunkTask, Index
from .spill import Spilled
from .workers import PredictorFactory, predictor_for

__all__ = ["Delivery", "RunSpec", "evaluate_chunk", "merge_and_store", "part_for"]


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
    spill: Path | None = None  # threads: where parts that wait for a later plane of chunks go (engine.spill)
    thresholds: tuple[float, ...] | None = None  # a multi-label model: per-class planes, not arg-max labels

    @property
    def hand_over(self) -> bool:
        """Part tasks take their part out of the evaluation (threads, where no task is ever re-run).

        Then an evaluation holds only the parts not yet merged, whatever order the scheduler
        picks. On a cluster a part may have to be recomputed from its evaluation after a worker
        dies, so there the evaluation keeps its parts and is released after its part tasks ran
        (they have the priority of their chunk).
        """
        return not self.to_host


def evaluate_chunk(scene: Scene, task: ChunkTask, run: RunSpec) -> Evaluation:
    """Read the task's region, run its windows and cut their contributions per target chunk."""
    assert task.read is not None
    failpoint("evaluate")  # tests: a worker process killed while it evaluates
    data, valid = scene.read(task.read)
    with predictor_for(run.factory) as predictor, torch.inference_mode():
        weights = weights_tensor(run.grid.tile, run.blend, predictor.device)
        return evaluate_windows(task.evaluates, run.grid, run.chunks, task.targets, task.read, data, valid,
                                predictor, weights, own=task.index if task.merge else None,
                                to_host=run.to_host)


@dataclass(frozen=True)
class Delivery:
    """What a ``part`` task hands a merge: the part, and (from one part per evaluation) its counts.

    The counts travel with the parts rather than as results of their own: an output that
    depends on every evaluation would make dask's ordering run all evaluations first.
    """

    part: Part | Spilled
    counts: dict[str, Any] | None = None


def part_for(evaluation: Evaluation, target: Index, report: bool, hand_over: bool, spill_to: str | None = None
             ) -> Delivery:
    """The part of an evaluation that goes to ``target`` (a task of its own, so only it moves).

    With ``hand_over`` the part is taken out of the evaluation (see :attr:`RunSpec.hand_over`).
    With ``spill_to`` (a file path) the part is written there and its merge reads it back.
    """
    counts = None
    if report:
        counts = {"evaluated": [list(i) for i in evaluation.evaluated], "skipped": evaluation.skipped}
    part = evaluation.parts.pop(target) if hand_over else evaluation.parts[target]
    return Delivery(part if spill_to is None else spill.write(part, Path(spill_to)), counts)


@lru_cache(maxsize=4)
def _store(path: Path, fingerprint: str) -> MaskStore:
    store = MaskStore.open(path, mode="r+")
    if store.fingerprint != fingerprint:
        raise RuntimeError(f"mask store {path} belongs to run {store.fingerprint}, not {fingerprint}")
    return store


def merge_and_store(task: ChunkTask, deliveries: list[Delivery], run: RunSpec, after: Any = None
                    ) -> dict[str, Any]:
    """Merge a chunk from its parts, write it to the store and record it as complete.

    Returns the completion record plus the counts of the evaluations that reported here.
    ``after`` is the previous merge's result when the graph chains merges (only an ordering).
    """
    t0 = time.perf_counter()
    parts = [spill.load(d.part) if isinstance(d.part, Spilled) else d.part for d in deliveries]
    counts = [d.counts for d in deliveries if d.counts is not None]
    del deliveries
    device = next((p.weighted.device for part in parts for p in part.pieces if p.weighted is not None),
                  torch.device("cpu"))
    with torch.inference_mode():
        weights = weights_tensor(run.grid.tile, run.blend, device)
        chunk = merge_chunk(task.index, task.box, parts, weights, run.num_classes, keep_scores=run.save_scores,
                            thresholds=run.thresholds)
    del parts
    store = _store(run.store, run.fingerprint)
    store.write(task.box, chunk.labels, chunk.scores, chunk.valid)
    record = {"index": list(task.index), "box": [list(task.box.start), list(task.box.stop)],
              "valid_pixels": int(np.count_nonzero(chunk.valid)),
              "seconds": round(time.perf_counter() - t0, 4)}
    store.mark_done(task.index, record)
    release_free_memory()
    return {**record, "evaluations": counts}
