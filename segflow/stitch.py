"""Blend overlapping window predictions into chunks, one chunk at a time.

Chunks are visited in raster order. A window is evaluated when the first chunk it touches is
processed (the chunk holding its start corner), kept while later chunks still need it, and
dropped after the last one. Each chunk sums ``w · p`` and ``w`` over the windows touching it,
always in global window order, so a pixel's value is computed by the same operations in the
same order whatever the chunking: the stitched result does not depend on the chunk size.

Memory is bounded by one chunk (plus its halo) and the windows that straddle the chunk seams
still ahead, never by the scene.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .scene import Scene
from .tiling import Box, ChunkGrid, WindowGrid

__all__ = ["BlendStats", "BlendedChunk", "blend_chunks"]

PredictFn = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


@dataclass(frozen=True)
class BlendedChunk:
    """One finished chunk: ``scores`` ``(K, *box.shape)`` float32 and ``valid`` ``box.shape`` bool."""

    index: tuple[int, ...]
    box: Box
    scores: np.ndarray
    valid: np.ndarray


@dataclass
class BlendStats:
    """Counts for provenance: windows run through the model, windows skipped as all-nodata."""

    windows_total: int = 0
    windows_evaluated: int = 0
    windows_skipped: int = 0
    chunks: int = 0
    evaluated: set[tuple[int, ...]] = field(default_factory=set, repr=False)


@dataclass
class _Cached:
    weighted: np.ndarray | None  # w * p over the window's box, (K, *box.shape); None if skipped
    weights: np.ndarray
    box: Box
    uses_left: int


def _read_box(grid: WindowGrid, chunk_box: Box, owned: list[tuple[int, ...]]) -> Box:
    """The region to read for a chunk: the chunk itself plus every window it evaluates."""
    box = chunk_box
    for index in owned:
        box = box.union(grid.window(index))
    return box


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


class _Engine:
    def __init__(self, scene: Scene, grid: WindowGrid, chunks: ChunkGrid, predict: PredictFn,
                 weights: np.ndarray, num_classes: int, batch_size: int):
        self.scene, self.grid, self.chunks = scene, grid, chunks
        self.predict, self.weights, self.num_classes = predict, weights, num_classes
        self.batch_size = batch_size
        self.cache: dict[tuple[int, ...], _Cached] = {}
        self.current: tuple[int, ...] | None = None
        self.stats = BlendStats(windows_total=len(grid))

    def plan(self, chunk_box: Box) -> tuple[list[tuple[int, ...]], Box]:
        owned = self.grid.indices_starting_in(chunk_box)
        return owned, _read_box(self.grid, chunk_box, owned)

    def evaluate(self, batch: list[tuple[int, ...]], region: Box, data: np.ndarray,
                 valid: np.ndarray | None) -> None:
        """Run the model on a batch of windows first needed by this chunk and cache ``w · p``."""
        todo: list[tuple[tuple[int, ...], Box]] = []
        for index in batch:
            box = self.grid.window(index)
            crop = self.weights[tuple(slice(0, s) for s in box.shape)]
            uses = len(self.chunks.indices_touching(box))
            self.cache[index] = _Cached(None, crop, box, uses)
            if valid is not None and not valid[box.relative_to(region)].any():
                self.stats.windows_skipped += 1
                continue
            todo.append((index, box))
        if not todo:
            return
        cut = [_window_input(data, valid, region, box, self.grid.tile) for _, box in todo]
        x = np.stack([c[0] for c in cut])
        v = None if valid is None else np.stack([c[1] for c in cut])  # type: ignore[misc]
        del cut
        probs = self.predict(x, v)
        del x, v
        for (index, box), p in zip(todo, probs, strict=True):
            entry = self.cache[index]
            entry.weighted = p[(slice(None), *(slice(0, s) for s in box.shape))] * entry.weights
            self.stats.windows_evaluated += 1
            self.stats.evaluated.add(index)

    def _trim(self, entry: _Cached) -> None:
        """Drop the rows (leading axis) of a cached window that lie in chunks already finished.

        Chunks are visited in raster order, so once the last chunk of the window's first band
        of chunks (along the leading axis) is done, that band is never needed again.
        """
        first, last = self.chunks.indices_touching(entry.box)[0], self.chunks.indices_touching(entry.box)[-1]
        band_done = self.current is not None and self.current[0] == first[0] and self.current[1:] == last[1:]
        if not band_done or first[0] == last[0]:
            return
        start = (first[0] + 1) * self.chunks.chunk[0]
        cut = start - entry.box.start[0]
        if entry.weighted is not None:
            entry.weighted = entry.weighted[:, cut:].copy()
        entry.weights = entry.weights[cut:]
        entry.box = Box((start, *entry.box.start[1:]), entry.box.stop)

    def blend(self, chunk_box: Box, owned: list[tuple[int, ...]], region: Box, data: np.ndarray,
              valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Sum the windows over one chunk in global window order and normalise.

        Windows not evaluated yet (those starting in this chunk, ``owned``, in grid order) are
        evaluated a batch at a time as the walk reaches them, so only one batch of fresh
        predictions plus the windows straddling later chunks are held at once.
        """
        acc = np.zeros((self.num_classes, *chunk_box.shape), dtype=np.float32)
        wsum = np.zeros(chunk_box.shape, dtype=np.float32)
        next_new = 0
        for index in self.grid.indices_touching(chunk_box):
            if index not in self.cache:
                assert owned[next_new] == index, "windows first needed here are evaluated in grid order"
                batch = owned[next_new : next_new + self.batch_size]
                next_new += len(batch)
                self.evaluate(batch, region, data, valid)
            entry = self.cache[index]
            inter = entry.box.intersect(chunk_box)
            assert inter is not None
            if entry.weighted is not None:
                src = inter.relative_to(entry.box)
                dst = inter.relative_to(chunk_box)
                acc[(slice(None), *dst)] += entry.weighted[(slice(None), *src)]
                wsum[dst] += entry.weights[src]
            entry.uses_left -= 1
            if entry.uses_left == 0:
                del self.cache[index]
            else:
                self._trim(entry)
        covered = wsum > 0
        np.divide(acc, wsum, out=acc, where=covered)
        return acc, covered


def blend_chunks(scene: Scene, grid: WindowGrid, chunks: ChunkGrid, predict: PredictFn, weights: np.ndarray,
                 num_classes: int, *, batch_size: int = 16, stats: BlendStats | None = None,
                 prefetch: bool = True) -> Iterator[BlendedChunk]:
    """Yield blended class scores chunk by chunk, in raster order.

    ``predict`` maps windows ``(N, C, *tile)`` (and their validity ``(N, *tile)`` or None) to
    probabilities ``(N, K, *tile)``. Windows whose pixels are all invalid are not evaluated;
    a pixel is valid in the output where the input is valid and some window covers it. With
    ``prefetch`` the next chunk's pixels are read in a background thread while the current one
    is computed. Counters go to ``stats`` when given.
    """
    engine = _Engine(scene, grid, chunks, predict, weights, num_classes, batch_size)
    if stats is not None:
        engine.stats = stats
        stats.windows_total = len(grid)
    order = list(chunks)
    plans = [engine.plan(box) for _, box in order]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segflow-read") as pool:
        pending: Future[tuple[np.ndarray, np.ndarray | None]] | None = None
        if order:
            pending = pool.submit(scene.read, plans[0][1])
        for k, (index, box) in enumerate(order):
            assert pending is not None
            data, valid = pending.result()
            if prefetch and k + 1 < len(order):
                pending = pool.submit(scene.read, plans[k + 1][1])
            owned, region = plans[k]
            engine.current = index
            scores, covered = engine.blend(box, owned, region, data, valid)
            rel = box.relative_to(region)
            del data
            chunk_valid = covered if valid is None else covered & valid[rel]
            del valid, covered
            engine.stats.chunks += 1
            yield BlendedChunk(index, box, scores, chunk_valid)
            del scores, chunk_valid  # the caller owns them now: do not keep them alive here
            if not prefetch and k + 1 < len(order):
                pending = pool.submit(scene.read, plans[k + 1][1])
