"""Window contributions and their merge into chunks: the two halves of every chunk task.

:func:`evaluate_windows` runs a model over windows read from one region and cuts each
window's ``w · p`` into the parts that fall in each chunk it touches. :func:`merge_chunk` sums
the parts a chunk received, always in global window order, and normalises: a pixel's value is
computed by the same operations in the same order whatever the chunking, scheduler or worker,
so the stitched result does not depend on any of them. Nothing here holds state between
chunks; the engine (:mod:`segflow.engine`) wires these functions into a dask graph.

:func:`blend_chunks` runs the same two functions in one process, chunk after chunk in raster
order, for callers that want the blended chunks in memory (training validation, tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from .batching import BatchedFunction, WindowPredictor
from .labels import LABEL_NODATA
from .scene import Scene
from .tiling import Box, ChunkGrid, WindowGrid, blend_weights

__all__ = [
    "LABEL_NODATA",
    "BlendStats",
    "BlendedChunk",
    "Evaluation",
    "Part",
    "Piece",
    "argmax_labels",
    "blend_chunks",
    "evaluate_windows",
    "merge_chunk",
    "threshold_labels",
    "weights_tensor",
]

Index = tuple[int, ...]
PredictFn = Callable[[np.ndarray, "np.ndarray | None"], "np.ndarray | torch.Tensor"]


@dataclass(frozen=True)
class BlendedChunk:
    """One finished chunk.

    ``labels`` ``box.shape`` uint8: arg-max class, :data:`LABEL_NODATA` where not ``valid``; for a
    multi-label model (merged with thresholds) ``(K, *box.shape)`` uint8: 1 where class k is present,
    0 where absent, :data:`LABEL_NODATA` where not ``valid`` (:func:`threshold_labels`);
    ``valid`` ``box.shape`` bool: the input holds data and some window covers the pixel;
    ``scores`` ``(K, *box.shape)`` float32 blended probabilities, only when asked for.
    """

    index: Index
    box: Box
    labels: np.ndarray
    valid: np.ndarray
    scores: np.ndarray | None = None


@dataclass
class BlendStats:
    """Counts for provenance: windows run through the model, windows skipped as all-nodata."""

    windows_total: int = 0
    windows_evaluated: int = 0
    windows_skipped: int = 0
    chunks: int = 0
    evaluated: set[Index] = field(default_factory=set, repr=False)


@dataclass(frozen=True)
class Piece:
    """The part of one window inside one chunk.

    ``box`` is in scene coordinates, ``offset`` where it starts inside the window;
    ``weighted`` is ``w · p`` over ``box`` ``(K, *box.shape)``, None for a window skipped
    because all its pixels are nodata (it then adds no weight either).
    """

    window: Index
    box: Box
    offset: tuple[int, ...]
    weighted: torch.Tensor | None


@dataclass(frozen=True)
class Part:
    """What one evaluation task hands one chunk: pieces of its windows, and the chunk's validity.

    ``valid`` (``box.shape`` bool, or None when every pixel is valid) comes only from the
    chunk's own evaluation task, which read the chunk; ``has_valid`` says whether it did.
    """

    pieces: tuple[Piece, ...]
    has_valid: bool = False
    valid: np.ndarray | None = None


@dataclass(frozen=True)
class Evaluation:
    """The result of one evaluation task: a :class:`Part` per target chunk, and counts."""

    parts: dict[Index, Part]
    evaluated: tuple[Index, ...]
    skipped: int


@lru_cache(maxsize=8)
def _weights_cpu(tile: tuple[int, ...], mode: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(blend_weights(tile, mode), dtype=np.float32))


def weights_tensor(tile: Sequence[int], mode: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """Blend weights of a window as a float32 tensor on ``device`` (cached on the CPU)."""
    return _weights_cpu(tuple(int(t) for t in tile), mode).to(device)


def _window_input(data: np.ndarray, valid: np.ndarray | None, region: Box, box: Box,
                  tile: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    """Cut one window out of a read region; pad it to the full tile when the scene is smaller."""
    rel = box.relative_to(region)
    x = data[(slice(None), *rel)]
    v = None if valid is None else valid[rel]
    pad = [(0, t - s) for t, s in zip(tile, box.shape, strict=True)]
    if any(p for _, p in pad):
        x = np.pad(x, [(0, 0), *pad], mode="symmetric")
        v = None if v is None else np.pad(v, pad, mode="symmetric")
    return x, v


def evaluate_windows(windows: Sequence[Index], grid: WindowGrid, chunks: ChunkGrid, targets: Sequence[Index],
                     region: Box, data: np.ndarray, valid: np.ndarray | None, predictor: WindowPredictor,
                     weights: torch.Tensor, *, own: Index | None = None, to_host: bool = False) -> Evaluation:
    """Run ``windows`` (read as ``data``/``valid`` over ``region``) and cut ``w · p`` per target chunk.

    Windows whose pixels are all invalid are not run. ``own``, when given, is the chunk whose
    validity mask this task supplies (it must lie inside ``region``). With ``to_host`` the
    pieces are moved to the CPU (for schedulers that ship results between processes).
    """
    wanted = set(targets)
    pieces: dict[Index, list[Piece]] = {t: [] for t in targets}
    run: list[tuple[Index, Box]] = []
    skipped = 0
    for index in windows:
        box = grid.window(index)
        if valid is not None and not valid[box.relative_to(region)].any():
            skipped += 1
            _cut(index, box, None, chunks, wanted, pieces)
        else:
            run.append((index, box))
    inputs = (_window_input(data, valid, region, box, grid.tile) for _, box in run)
    for (index, box), p in zip(run, predictor.predict_windows(inputs), strict=True):
        crop = tuple(slice(0, s) for s in box.shape)
        weighted = p[(slice(None), *crop)] * weights[crop]
        if to_host:
            weighted = weighted.cpu()
        _cut(index, box, weighted, chunks, wanted, pieces)
    parts = {t: Part(tuple(ps)) for t, ps in pieces.items()}
    if own is not None:
        chunk_valid = None if valid is None else valid[chunks.box(own).relative_to(region)].copy()
        parts[own] = Part(parts[own].pieces if own in parts else (), True, chunk_valid)
    return Evaluation(parts, tuple(i for i, _ in run), skipped)


def _cut(index: Index, box: Box, weighted: torch.Tensor | None, chunks: ChunkGrid, wanted: set[Index],
         pieces: dict[Index, list[Piece]]) -> None:
    touching = [c for c in chunks.indices_touching(box) if c in wanted]
    for target in touching:
        inter = box.intersect(chunks.box(target))
        assert inter is not None
        offset = tuple(a - b for a, b in zip(inter.start, box.start, strict=True))
        piece = None
        if weighted is not None:
            piece = weighted if inter == box else weighted[(slice(None), *inter.relative_to(box))].clone()
        pieces[target].append(Piece(index, inter, offset, piece))


def argmax_labels(acc: torch.Tensor, valid: np.ndarray) -> np.ndarray:
    """uint8 arg-max over classes (the first class wins ties), nodata where not valid.

    One elementwise pass per class: much faster on the CPU than ``argmax(dim=0)`` over a
    large class-first array, with the same result.
    """
    best = acc[0].clone()
    labels = torch.zeros(acc.shape[1:], dtype=torch.uint8, device=acc.device)
    for k in range(1, acc.shape[0]):
        better = acc[k] > best
        best = torch.where(better, acc[k], best)
        labels.masked_fill_(better, k)
    out = labels.cpu().numpy()
    out[~valid] = LABEL_NODATA
    return out


def threshold_labels(acc: torch.Tensor, valid: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Multi-label planes ``(K, *shape)`` uint8 from blended probabilities ``acc`` ``(K, *shape)``.

    1 where ``acc[k] >= thresholds[k]`` (both as float32), 0 elsewhere, :data:`LABEL_NODATA` where
    not ``valid`` (``shape`` bool), in every plane.
    """
    if len(thresholds) != acc.shape[0]:
        raise ValueError(f"{len(thresholds)} thresholds for {acc.shape[0]} classes")
    limit = torch.tensor(list(thresholds), dtype=torch.float32, device=acc.device).reshape(-1, *(1,) * (acc.ndim - 1))
    out = (acc >= limit).to(torch.uint8).cpu().numpy()
    out[:, ~valid] = LABEL_NODATA
    return out


def merge_chunk(index: Index, box: Box, parts: Sequence[Part], weights: torch.Tensor, num_classes: int, *,
                keep_scores: bool = False, thresholds: Sequence[float] | None = None) -> BlendedChunk:
    """Sum the pieces of every window touching the chunk ``box`` in global window order, normalise, label.

    Labels are the arg-max class, or with ``thresholds`` (a multi-label model: one per class) the
    per-class planes of :func:`threshold_labels`. Exactly one part must carry the chunk's validity
    (``has_valid``). The accumulators live on ``weights``' device.
    """
    device = weights.device
    pieces = sorted((p for part in parts for p in part.pieces), key=lambda p: p.window)
    given = [part for part in parts if part.has_valid]
    if len(given) != 1:
        raise RuntimeError(f"chunk {index} received {len(given)} validity masks, expected exactly one")
    acc = torch.zeros((num_classes, *box.shape), dtype=torch.float32, device=device)
    wsum = torch.zeros(box.shape, dtype=torch.float32, device=device)
    for piece in pieces:
        if piece.weighted is None:
            continue
        dst = piece.box.relative_to(box)
        src = tuple(slice(o, o + s) for o, s in zip(piece.offset, piece.box.shape, strict=True))
        acc[(slice(None), *dst)] += piece.weighted.to(device)
        wsum[dst] += weights[src]
    covered = wsum > 0
    acc /= torch.where(covered, wsum, torch.ones((), device=device))
    valid = covered.cpu().numpy()
    if given[0].valid is not None:
        valid &= given[0].valid
    labels = argmax_labels(acc, valid) if thresholds is None else threshold_labels(acc, valid, thresholds)
    scores = acc.cpu().numpy() if keep_scores else None
    return BlendedChunk(index, box, labels, valid, scores)


def blend_chunks(scene: Scene, grid: WindowGrid, chunks: ChunkGrid, predict: PredictFn | WindowPredictor,
                 weights: np.ndarray | str, num_classes: int, *, batch_size: int = 16,
                 stats: BlendStats | None = None, keep_scores: bool = False,
                 device: torch.device | str | None = None,
                 thresholds: Sequence[float] | None = None) -> Iterator[BlendedChunk]:
    """Yield blended chunks in raster order, computed in this process by the engine's own task functions.

    ``predict`` is a :class:`~segflow.predict.Predictor` (anything with ``predict_windows``)
    or a function mapping windows ``(N, C, *tile)`` and their validity ``(N, *tile)`` (or
    None) to probabilities ``(N, K, *tile)``, run ``batch_size`` windows at a time.
    ``weights`` is a blend mode name or the weights array of shape ``tile``. An evaluation is
    kept only until the last chunk it feeds is merged. Counters go to ``stats`` when given.
    ``thresholds`` (one per class): multi-label planes instead of arg-max labels (:func:`merge_chunk`).
    """
    from .engine.plan import make_plan

    dev = torch.device(device if device is not None else getattr(predict, "device", "cpu"))
    predictor = predict if hasattr(predict, "predict_windows") else BatchedFunction(predict, batch_size)
    if isinstance(weights, str):
        w = weights_tensor(grid.tile, weights, dev)
    else:
        w = torch.as_tensor(np.ascontiguousarray(weights, dtype=np.float32), device=dev)
    stats = stats if stats is not None else BlendStats()
    stats.windows_total = len(grid)
    plan = make_plan(grid, chunks)
    results: dict[Index, Evaluation] = {}
    with torch.inference_mode():
        for task in plan.tasks:
            for source in task.sources:
                if source not in results:
                    src = plan.by_index[source]
                    assert src.read is not None
                    data, valid = scene.read(src.read)
                    ev = evaluate_windows(src.evaluates, grid, chunks, src.targets, src.read, data, valid,
                                          predictor, w, own=source)
                    stats.windows_evaluated += len(ev.evaluated)
                    stats.windows_skipped += ev.skipped
                    stats.evaluated.update(ev.evaluated)
                    results[source] = ev
            parts = [results[s].parts.pop(task.index) for s in task.sources]
            for source in task.sources:
                if not results[source].parts:
                    del results[source]
            chunk = merge_chunk(task.index, task.box, parts, w, num_classes, keep_scores=keep_scores,
                                thresholds=thresholds)
            del parts
            stats.chunks += 1
            yield chunk
