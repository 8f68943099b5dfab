"""Where training chips are taken: the validation hold-out and the random chip positions.

:func:`hold_out` sets aside chip-sized grid cells of the training sources for validation;
:class:`ChipSampler` draws ``(source, start)`` positions from a ``numpy.random.Generator``
(deterministic under its seed), never touching a held-out cell.

Foreground oversampling (nnU-Net's ``oversample_foreground_percent``, class-balanced): with
probability ``foreground`` a chip is centred on a voxel of a foreground class. The class is
drawn uniformly among the foreground classes (every class but 0) that some source holds
outside the held-out cells, so a rare class gets as many such chips as a common one; then a
source holding it (in proportion to the sources' sizes), then one of the voxel positions the
source recorded for that class (:meth:`~segflow.training.sources.ChipSource.class_locations`). The chip is
centred on that voxel and shifted, where needed, to lie inside the source. NIfTI pairs and the 2D
sources (raster pairs, vector labels, synthetic scenes; :mod:`segflow.training.locations`)
record class locations; sources that record none (synthetic volumes) are sampled uniformly
only; with no such source, or ``foreground`` 0 (the 2D default), the sampler draws exactly what
it did before oversampling existed.

Positions are ``start`` tuples, one int per spatial axis, ``(Y, X)`` or ``(Z, Y, X)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from .sources import ChipSource

__all__ = ["ChipSampler", "Holdout", "grid_cells", "hold_out"]

Start = tuple[int, ...]


def grid_cells(shape: tuple[int, ...], chip: tuple[int, ...]) -> tuple[int, ...]:
    """Number of whole chip-sized cells along each axis (at least 1)."""
    return tuple(max(1, s // c) for s, c in zip(shape, chip, strict=True))


@dataclass(frozen=True)
class Holdout:
    """Grid cells (chip-sized, aligned to multiples of the chip) held out for validation.

    ``masks[i]`` is a bool array over source ``i``'s cell grid; True = held out.
    """

    chip: tuple[int, ...]
    masks: tuple[np.ndarray, ...]

    def overlaps(self, source: int, start: Start) -> bool:
        """Whether the chip at ``start`` in ``source`` touches a held-out cell."""
        mask = self.masks[source]
        index = []
        for s, c, n in zip(start, self.chip, mask.shape, strict=True):
            index.append(slice(min(s // c, n), min((s + c - 1) // c + 1, n)))
        return bool(mask[tuple(index)].any())

    def overlaps_many(self, source: int, starts: np.ndarray) -> np.ndarray:
        """:meth:`overlaps` for every row of ``starts`` ``(N, dims)`` (starts >= 0); bool ``(N,)``.

        A chip spans at most two cells per axis (cells are chip-sized): its first and last.
        """
        mask = self.masks[source]
        chip = np.asarray(self.chip, dtype=np.int64)
        first = starts // chip
        last = (starts + chip - 1) // chip
        hit = np.zeros(len(starts), dtype=bool)
        for corner in itertools.product((0, 1), repeat=mask.ndim):
            index = np.where(np.asarray(corner, dtype=bool), last, first)
            inside = (index < np.asarray(mask.shape)).all(axis=1)
            clipped = np.minimum(index, np.asarray(mask.shape) - 1)
            hit |= inside & mask[tuple(clipped.T)]
        return hit

    def cells(self) -> list[tuple[int, Start]]:
        """Every held-out cell as ``(source index, start)``, in source and raster order."""
        out = []
        for i, mask in enumerate(self.masks):
            for idx in np.argwhere(mask):
                out.append((i, tuple(int(k) * c for k, c in zip(idx, self.chip, strict=True))))
        return out


def hold_out(sources: Sequence[ChipSource], chip: tuple[int, ...], fraction: float,
             rng: np.random.Generator) -> Holdout:
    """Hold out ``fraction`` of all chip-sized grid cells (at least one), chosen by ``rng``.

    Raises
    ------
    ConfigError
        If the sources hold fewer than two cells (nothing would be left to train on).
    """
    grids = [grid_cells(s.spatial_shape, chip) for s in sources]
    sizes = [math.prod(g) for g in grids]
    total = sum(sizes)
    if total < 2:
        raise ConfigError(
            f"the training data holds {total} chip(s) of {chip}: too few to hold out validation chips; "
            "give validation data of its own (validation.pairs/synthetic) or a smaller model.chip"
        )
    count = min(total - 1, max(1, round(fraction * total)))
    chosen = np.zeros(total, dtype=bool)
    chosen[rng.choice(total, size=count, replace=False)] = True
    masks, offset = [], 0
    for grid, size in zip(grids, sizes, strict=True):
        masks.append(chosen[offset : offset + size].reshape(grid))
        offset += size
    return Holdout(chip, tuple(masks))


def _centred_starts(locations: np.ndarray, shape: tuple[int, ...], chip: tuple[int, ...]) -> np.ndarray:
    """Starts of chips centred on ``locations`` ``(N, dims)``, shifted to lie inside ``shape`` where it allows."""
    half = np.asarray(chip, dtype=np.int64) // 2
    top = np.maximum(0, np.asarray(shape, dtype=np.int64) - np.asarray(chip, dtype=np.int64))
    return np.clip(locations.astype(np.int64) - half, 0, top)


class ChipSampler:
    """Random chip positions over several sources, avoiding held-out cells.

    A source is picked with probability proportional to its pixel count, then a start position
    uniformly (whole chip inside the source when it is large enough). Positions that touch a
    held-out cell are redrawn; after ``tries`` misses a free grid cell is taken instead. With
    ``foreground`` > 0, that fraction of chips is centred on a foreground voxel instead (see
    the module docstring).
    """

    def __init__(self, sources: Sequence[ChipSource], chip: tuple[int, ...], holdout: Holdout | None = None,
                 tries: int = 32, foreground: float = 0.0):
        if not sources:
            raise ConfigError("no training data: the config's data section yields no source; add pairs or synthetic")
        if not 0.0 <= foreground <= 1.0:
            raise ConfigError(f"foreground fraction {foreground} must lie in [0, 1]; e.g. 0.33 as nnU-Net")
        self.sources, self.chip, self.holdout, self.tries = list(sources), chip, holdout, tries
        sizes = np.array([math.prod(s.spatial_shape) for s in self.sources], dtype=np.float64)
        self.sizes = sizes
        self.weights = sizes / sizes.sum()
        free = [] if holdout is None else [(i, idx) for i, m in enumerate(holdout.masks) for idx in np.argwhere(~m)]
        if holdout is not None and not free:
            raise ConfigError("every training cell is held out for validation; lower validation.fraction")
        self.free = free
        self.foreground = float(foreground)
        # class -> [(source index, allowed starts (N, dims))], only classes some source holds outside the hold-out
        self.centred: dict[int, list[tuple[int, np.ndarray]]] = {}
        if self.foreground > 0:
            self._index_foreground()

    def _index_foreground(self) -> None:
        for i, source in enumerate(self.sources):
            locations = source.class_locations()
            if not locations:
                continue
            for k, where in sorted(locations.items()):
                if k == 0 or len(where) == 0:
                    continue
                starts = _centred_starts(np.asarray(where), source.spatial_shape, self.chip)
                if self.holdout is not None:
                    starts = starts[~self.holdout.overlaps_many(i, starts)]
                if len(starts):
                    self.centred.setdefault(int(k), []).append((i, starts))

    @property
    def foreground_classes(self) -> tuple[int, ...]:
        """The classes chips are centred on (those some source holds outside the held-out cells)."""
        return tuple(sorted(self.centred))

    def sample(self, rng: np.random.Generator) -> tuple[int, Start]:
        """Draw ``(source index, start)`` from ``rng``."""
        if self.centred and rng.random() < self.foreground:
            return self._sample_foreground(rng)
        for _ in range(self.tries):
            i = int(rng.choice(len(self.sources), p=self.weights))
            shape = self.sources[i].spatial_shape
            start = tuple(int(rng.integers(0, max(0, s - c) + 1)) for s, c in zip(shape, self.chip, strict=True))
            if self.holdout is None or not self.holdout.overlaps(i, start):
                return i, start
        i, idx = self.free[int(rng.integers(len(self.free)))]
        return i, tuple(int(k) * c for k, c in zip(idx, self.chip, strict=True))

    def _sample_foreground(self, rng: np.random.Generator) -> tuple[int, Start]:
        classes = self.foreground_classes
        holders = self.centred[classes[int(rng.integers(len(classes)))]]
        weights = np.array([self.sizes[i] for i, _ in holders])
        i, starts = holders[int(rng.choice(len(holders), p=weights / weights.sum()))]
        return i, tuple(int(v) for v in starts[int(rng.integers(len(starts)))])
