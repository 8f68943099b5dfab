"""Blend overlapping window predictions into chunks, one chunk at a time.

Chunks are visited in raster order. A window is evaluated when the first chunk it touches is
processed (the chunk holding its start corner), kept while later chunks still need it, and
dropped after the last one. Each chunk sums ``w · p`` and ``w`` over the windows touching it,
always in global window order, so a pixel's value is computed by the same operations in the
same order whatever the chunking: the stitched result does not depend on the chunk size.

Accumulation runs with torch on the predictor's device: on a GPU the chunk accumulators and
the windows kept for later chunks stay on the GPU, and only labels (and scores, if asked)
come back to the host. Memory is bounded by one chunk plus the windows straddling the seams
ahead, never by the scene.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from .scene import Scene
from .tiling import Box, ChunkGrid, WindowGrid

__all__ = ["LABEL_NODATA", "BlendStats", "BlendedChunk", "blend_chunks"]

LABEL_NODATA = 255
PredictFn = Callable[[np.ndarray, "np.ndarray | None"], "np.ndarray | torch.Tensor"]
Index = tuple[int, ...]


@dataclass(frozen=True)
class BlendedChunk:
    """One finished chunk.

    ``labels`` ``box.shape`` uint8: arg-max class, :data:`LABEL_NODATA` where not ``valid``;
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


@dataclass
class _Cached:
    weighted: torch.Tensor | None  # w * p over the window's box, (K, *box.shape); None if skipped
    weights: torch.Tensor
    box: Box
    uses_left: int


def _read_box(grid: WindowGrid, chunk_box: Box, owned: list[Index]) -> Box:
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


def _argmax_labels(acc: torch.Tensor, valid: np.ndarray) -> np.ndarray:
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


class _Engine:
    def __init__(self, grid: WindowGrid, chunks: ChunkGrid, predict: PredictFn, weights: np.ndarray,
                 num_classes: int, batch_size: int, device: torch.device):
        self.grid, self.chunks, self.predict = grid, chunks, predict
        self.device = device
        self.weights = torch.as_tensor(np.ascontiguousarray(weights, dtype=np.float32), device=device)
        self.num_classes, self.batch_size = num_classes, batch_size
        self.cache: dict[Index, _Cached] = {}
        self.spare: dict[tuple[int, ...], torch.Tensor] = {}
        self.current: Index | None = None
        self.stats = BlendStats(windows_total=len(grid))

    def zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A zeroed float32 accumulator, reusing a recycled one of that shape (no fresh pages to fault in)."""
        spare = self.spare.pop(shape, None)
        if spare is None:
            return torch.zeros(shape, dtype=torch.float32, device=self.device)
        return spare.zero_()

    def recycle(self, *tensors: torch.Tensor) -> None:
        """Keep accumulators nobody references any more for the next chunk of the same shape."""
        for t in tensors:
            self.spare[tuple(t.shape)] = t

    def plan(self, chunk_box: Box) -> tuple[list[Index], Box]:
        owned = self.grid.indices_starting_in(chunk_box)
        return owned, _read_box(self.grid, chunk_box, owned)

    def evaluate(self, batch: list[Index], region: Box, data: np.ndarray, valid: np.ndarray | None) -> None:
        """Run the model on a batch of windows first needed by this chunk and cache ``w · p``."""
        todo: list[tuple[Index, Box]] = []
        for index in batch:
            box = self.grid.window(index)
            crop = self.weights[tuple(slice(0, s) for s in box.shape)]
            self.cache[index] = _Cached(None, crop, box, len(self.chunks.indices_touching(box)))
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
        probs = torch.as_tensor(self.predict(x, v), device=self.device)
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
        touching = self.chunks.indices_touching(entry.box)
        first, last = touching[0], touching[-1]
        band_done = self.current is not None and self.current[0] == first[0] and self.current[1:] == last[1:]
        if not band_done or first[0] == last[0]:
            return
        start = (first[0] + 1) * self.chunks.chunk[0]
        cut = start - entry.box.start[0]
        if entry.weighted is not None:
            entry.weighted = entry.weighted[:, cut:].clone()
        entry.weights = entry.weights[cut:]
        entry.box = Box((start, *entry.box.start[1:]), entry.box.stop)

    def blend(self, chunk_box: Box, owned: list[Index], region: Box, data: np.ndarray,
              valid: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sum the windows over one chunk in global window order and normalise.

        Returns the normalised class scores, the weight sums and where the weights are positive.

        Windows not evaluated yet (those starting in this chunk, ``owned``, in grid order) are
        evaluated a batch at a time as the walk reaches them, so only one batch of fresh
        predictions plus the windows straddling later chunks are held at once.
        """
        acc = self.zeros((self.num_classes, *chunk_box.shape))
        wsum = self.zeros(chunk_box.shape)
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
        acc /= torch.where(covered, wsum, torch.ones((), device=self.device))
        return acc, wsum, covered


def blend_chunks(scene: Scene, grid: WindowGrid, chunks: ChunkGrid, predict: PredictFn, weights: np.ndarray,
                 num_classes: int, *, batch_size: int = 16, stats: BlendStats | None = None,
                 keep_scores: bool = False, device: torch.device | str | None = None,
                 prefetch: bool = True) -> Iterator[BlendedChunk]:
    """Yield blended chunks, in raster order.

    ``predict`` maps windows ``(N, C, *tile)`` (and their validity ``(N, *tile)`` or None) to
    probabilities ``(N, K, *tile)``, as numpy or as a torch tensor. Accumulation runs on
    ``device`` (default: ``predict.device`` if it has one, else the CPU). Windows whose pixels
    are all invalid are not evaluated; a pixel is valid in the output where the input is valid
    and some window covers it. With ``prefetch`` the next chunk's pixels are read in a
    background thread while the current one is computed. Counters go to ``stats`` when given.
    """
    dev = torch.device(device if device is not None else getattr(predict, "device", "cpu"))
    engine = _Engine(grid, chunks, predict, weights, num_classes, batch_size, dev)
    if stats is not None:
        engine.stats = stats
        stats.windows_total = len(grid)
    order = list(chunks)
    plans = [engine.plan(box) for _, box in order]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segflow-read") as pool, torch.inference_mode():
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
            acc, wsum, covered = engine.blend(box, owned, region, data, valid)
            rel = box.relative_to(region)
            chunk_valid = covered.cpu().numpy()
            if valid is not None:
                chunk_valid &= valid[rel]
            del data, valid, covered
            labels = _argmax_labels(acc, chunk_valid)
            scores = acc.cpu().numpy() if keep_scores else None
            engine.recycle(wsum)
            if not keep_scores:  # on the CPU the scores share acc's memory
                engine.recycle(acc)
            del acc, wsum
            engine.stats.chunks += 1
            yield BlendedChunk(index, box, labels, chunk_valid, scores)
            del labels, scores, chunk_valid  # the caller owns them now: do not keep them alive here
            if not prefetch and k + 1 < len(order):
                pending = pool.submit(scene.read, plans[k + 1][1])
