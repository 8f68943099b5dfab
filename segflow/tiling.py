"""Window grid, blending weights and chunk arithmetic: pure functions, any number of dimensions.

Coordinates are array indices along the spatial axes of a scene, in axis order
(``Y, X`` for rasters, ``Z, Y, X`` for volumes). Boxes are half-open.

The window grid is global: fixed by the scene shape, the tile and the stride, anchored at
the scene origin, and independent of how the scene is chunked for processing. Its start
positions along one axis follow MONAI's ``dense_patch_slices``: ``0, s, 2s, ...`` with the
last window shifted back to end exactly at the scene edge, so every pixel is covered and no
window hangs over the edge (a scene smaller than a tile gets one window, clipped).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .errors import ConfigError, SegflowWarning

__all__ = [
    "BLEND_MODES",
    "Box",
    "ChunkGrid",
    "WindowGrid",
    "axis_starts",
    "blend_weights",
    "effective_tile",
    "minimum_windows",
    "stride_for",
    "warn_if_oversampled",
]

BLEND_MODES = ("gaussian", "cosine", "constant")


def _as_tuple(value: int | Sequence[int], ndim: int, what: str) -> tuple[int, ...]:
    if isinstance(value, int | np.integer):
        out = (int(value),) * ndim
    else:
        out = tuple(int(v) for v in value)
    if len(out) != ndim:
        raise ConfigError(f"{what} has {len(out)} values {out}, expected {ndim} (one per spatial axis)")
    return out


@dataclass(frozen=True)
class Box:
    """A half-open box ``[start, stop)`` in index space, one pair per spatial axis."""

    start: tuple[int, ...]
    stop: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.start) != len(self.stop):
            raise ConfigError(f"box start {self.start} and stop {self.stop} differ in dimensions")
        if any(b < a for a, b in zip(self.start, self.stop, strict=True)):
            raise ConfigError(f"box stop {self.stop} lies before its start {self.start}")

    @property
    def ndim(self) -> int:
        return len(self.start)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))

    def intersect(self, other: Box) -> Box | None:
        """The common part of two boxes, or None when they do not overlap."""
        start = tuple(max(a, b) for a, b in zip(self.start, other.start, strict=True))
        stop = tuple(min(a, b) for a, b in zip(self.stop, other.stop, strict=True))
        if any(b <= a for a, b in zip(start, stop, strict=True)):
            return None
        return Box(start, stop)

    def relative_to(self, origin: Box) -> tuple[slice, ...]:
        """Slices selecting this box inside an array that holds ``origin``."""
        return tuple(
            slice(a - o, b - o) for a, b, o in zip(self.start, self.stop, origin.start, strict=True)
        )

    def union(self, other: Box) -> Box:
        """The smallest box holding both."""
        start = tuple(min(a, b) for a, b in zip(self.start, other.start, strict=True))
        stop = tuple(max(a, b) for a, b in zip(self.stop, other.stop, strict=True))
        return Box(start, stop)


def stride_for(tile: int, overlap: float) -> int:
    """Window stride for a tile and a fractional overlap, as MONAI computes it.

    ``overlap`` must be in ``[0, 1)``; the stride is ``int(tile * (1 - overlap))``, at least 1.
    """
    if not 0.0 <= overlap < 1.0 or math.isnan(overlap):
        raise ConfigError(f"overlap must be >= 0 and < 1, got {overlap}; e.g. --overlap 0.25")
    if tile < 1:
        raise ConfigError(f"tile must be a positive number of pixels, got {tile}")
    return max(int(tile * (1.0 - overlap)), 1)


def effective_tile(tile: Sequence[int], shape: Sequence[int], *, fixed: bool = False) -> tuple[int, ...]:
    """The window size actually evaluated: ``tile`` clipped to the scene on each axis.

    A fully convolutional network takes any window size, so a window larger than the scene
    would only add padding that costs memory and time; a network that needs its exact tile
    (``fixed``) keeps it and its windows are padded.
    """
    if len(tile) != len(shape):
        raise ConfigError(f"tile {tuple(tile)} and scene shape {tuple(shape)} have different numbers of axes")
    if fixed:
        return tuple(int(t) for t in tile)
    return tuple(min(int(t), int(s)) for t, s in zip(tile, shape, strict=True))


def axis_starts(size: int, tile: int, stride: int) -> np.ndarray:
    """Start indices of the windows along one axis of length ``size``.

    Windows start at ``0, stride, 2*stride, ...`` until one reaches the end; that last one is
    shifted back to end at ``size``. With ``tile >= size`` there is one window at 0.
    """
    if size < 1 or tile < 1 or stride < 1:
        raise ConfigError(f"axis size, tile and stride must be >= 1, got {size}, {tile}, {stride}")
    if tile >= size:
        return np.zeros(1, dtype=np.int64)
    count = 1 + math.ceil((size - tile) / stride)
    starts = np.arange(count, dtype=np.int64) * stride
    return np.minimum(starts, size - tile)


@dataclass(frozen=True)
class WindowGrid:
    """The global grid of model windows over a scene.

    ``shape`` is the scene's spatial shape, ``tile`` the model's window size and ``stride``
    the step between window starts, per axis. A window is named by its grid index (one
    integer per axis); windows are ordered lexicographically by that index.
    """

    shape: tuple[int, ...]
    tile: tuple[int, ...]
    stride: tuple[int, ...]

    @classmethod
    def create(cls, shape: Sequence[int], tile: int | Sequence[int], overlap: float) -> WindowGrid:
        """Grid for ``shape`` with windows of ``tile`` overlapping by the fraction ``overlap``."""
        shape_t = tuple(int(s) for s in shape)
        if not shape_t or any(s < 1 for s in shape_t):
            raise ConfigError(f"scene shape must be positive on every axis, got {shape_t}")
        tile_t = _as_tuple(tile, len(shape_t), "tile")
        stride = tuple(stride_for(t, overlap) for t in tile_t)
        return cls(shape_t, tile_t, stride)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @cached_property
    def starts(self) -> tuple[np.ndarray, ...]:
        """Window start indices, one array per axis."""
        return tuple(axis_starts(n, t, s) for n, t, s in zip(self.shape, self.tile, self.stride, strict=True))

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.starts)

    def __len__(self) -> int:
        return math.prod(self.counts)

    def window(self, index: Sequence[int]) -> Box:
        """The box a window covers in the scene (clipped to the scene when the tile is larger)."""
        start = tuple(int(s[i]) for s, i in zip(self.starts, index, strict=True))
        stop = tuple(min(a + t, n) for a, t, n in zip(start, self.tile, self.shape, strict=True))
        return Box(start, stop)

    def indices_touching(self, box: Box) -> list[tuple[int, ...]]:
        """Indices of the windows that overlap ``box``, in grid order."""
        ranges = []
        for starts, tile, a, b in zip(self.starts, self.tile, box.start, box.stop, strict=True):
            first = int(np.searchsorted(starts + tile, a, side="right"))
            last = int(np.searchsorted(starts, b, side="left"))
            ranges.append(range(first, last))
        return list(itertools.product(*ranges))

    def indices_starting_in(self, box: Box) -> list[tuple[int, ...]]:
        """Indices of the windows whose start lies in ``box``, in grid order."""
        ranges = []
        for starts, a, b in zip(self.starts, box.start, box.stop, strict=True):
            ranges.append(range(int(np.searchsorted(starts, a, "left")), int(np.searchsorted(starts, b, "left"))))
        return list(itertools.product(*ranges))


def minimum_windows(shape: Sequence[int], tile: Sequence[int]) -> int:
    """How many windows of ``tile`` cover ``shape`` without overlap: the product of ``ceil(n / t)``."""
    return math.prod(math.ceil(n / min(t, n)) for n, t in zip(shape, tile, strict=True))


OVERSAMPLING_PER_AXIS = 4.0
"""A grid with more than ``4 ** ndim`` times the windows that cover the scene without overlap
(more than an overlap of 0.75 on every axis of a large scene gives) is warned about."""


def warn_if_oversampled(grid: WindowGrid, overlap: float) -> bool:
    """Warn (one line, :class:`~segflow.errors.SegflowWarning`) when ``grid`` evaluates far more windows than needed.

    "Far more" is above ``OVERSAMPLING_PER_AXIS ** ndim`` times :func:`minimum_windows`. The
    message names the window count, the scene and tile sizes (pixels, axis order), the overlap
    asked and the count at overlap 0.5. Returns whether it warned.
    """
    needed = minimum_windows(grid.shape, grid.tile)
    if len(grid) <= needed * OVERSAMPLING_PER_AXIS**grid.ndim:
        return False
    half = len(WindowGrid.create(grid.shape, grid.tile, 0.5))
    size, tile = "x".join(map(str, grid.shape)), "x".join(map(str, grid.tile))
    warnings.warn(
        f"overlap {overlap:g} makes {len(grid)} windows for a {size} scene with {tile} tiles, {len(grid) / needed:.0f}"
        f" times the {needed} that cover it without overlap; an overlap of 0.25-0.5 is usual (e.g. --overlap 0.5: "
        f"{half} windows)", SegflowWarning, stacklevel=2)
    return True


@dataclass(frozen=True)
class ChunkGrid:
    """A regular partition of the scene into processing chunks, visited in raster order."""

    shape: tuple[int, ...]
    chunk: tuple[int, ...]

    @classmethod
    def create(cls, shape: Sequence[int], chunk: int | Sequence[int]) -> ChunkGrid:
        shape_t = tuple(int(s) for s in shape)
        chunk_t = _as_tuple(chunk, len(shape_t), "chunk")
        if any(c < 1 for c in chunk_t):
            raise ConfigError(f"chunk size must be >= 1 pixel on every axis, got {chunk_t}")
        return cls(shape_t, tuple(min(c, n) for c, n in zip(chunk_t, shape_t, strict=True)))

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(math.ceil(n / c) for n, c in zip(self.shape, self.chunk, strict=True))

    def __len__(self) -> int:
        return math.prod(self.counts)

    def box(self, index: Sequence[int]) -> Box:
        start = tuple(i * c for i, c in zip(index, self.chunk, strict=True))
        stop = tuple(min(a + c, n) for a, c, n in zip(start, self.chunk, self.shape, strict=True))
        return Box(start, stop)

    def __iter__(self) -> Iterator[tuple[tuple[int, ...], Box]]:
        for index in itertools.product(*(range(n) for n in self.counts)):
            yield index, self.box(index)

    def indices_touching(self, box: Box) -> list[tuple[int, ...]]:
        """Indices of the chunks that overlap ``box``, in raster order."""
        ranges = [
            range(a // c, (b - 1) // c + 1) for a, b, c in zip(box.start, box.stop, self.chunk, strict=True)
        ]
        return list(itertools.product(*ranges))


def _axis_weights(n: int, mode: str, sigma_scale: float) -> np.ndarray:
    if mode == "constant":
        return np.ones(n, dtype=np.float64)
    if mode == "gaussian":
        sigma = n * sigma_scale
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        return np.exp(x**2 / (-2.0 * sigma**2))
    if mode == "cosine":
        return np.sin(np.pi * (np.arange(n, dtype=np.float64) + 0.5) / n) ** 2
    raise ConfigError(f"blend mode must be one of {', '.join(BLEND_MODES)}, got {mode!r}")


def blend_weights(tile: Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125) -> np.ndarray:
    """Blending weight of each pixel of a window, shape ``tile``, float32, strictly positive.

    ``gaussian`` is MONAI's importance map (sigma = tile * sigma_scale per axis, the product of
    1-D Gaussians centred on the window), ``cosine`` the product of sin² tapers (a Hann window
    that never reaches zero), ``constant`` all ones. As in MONAI, weights are clamped below at
    ``max(min weight, 1e-3)`` so no covered pixel is left with a zero weight sum.
    """
    if mode not in BLEND_MODES:
        raise ConfigError(f"blend mode must be one of {', '.join(BLEND_MODES)}, got {mode!r}")
    weights = np.ones((), dtype=np.float64)
    for n in tile:
        weights = np.multiply.outer(weights, _axis_weights(int(n), mode, sigma_scale))
    weights = weights.astype(np.float32)
    floor = max(float(weights.min()), 1e-3)
    return np.maximum(weights, np.float32(floor))
