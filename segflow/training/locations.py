"""Where each class is in a training source: the positions foreground oversampling centres chips on.

One scan of a source's labels, block by block (never the whole source at once), keeps a uniform
random sample of at most :data:`LOCATIONS_PER_CLASS` positions per class > 0
(:class:`LocationReservoir`: every labelled position gets a random key from one seeded generator,
drawn in scan order, and the smallest keys are kept: deterministic for a given scan). NIfTI
pairs scan their label file slab by slab (:mod:`segflow.training.nifti`); 2D sources (raster
pairs, vector labels, synthetic scenes) mix in :class:`ScannedLocations`, which reads the source
in :data:`SCAN_BLOCK` blocks with ``read_inside`` (image and labels: one pass over the source,
once per run, only when ``sampling.foreground`` > 0).

Positions are ``(N, dims)`` int64 in the source's spatial grid, ``(y, x)`` or ``(z, y, x)``.
Multi-label labels ``(K, *shape)`` (0/1 planes) give the positions of each plane ``k`` that is 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .sources import IGNORE, Chip, Start

__all__ = ["LOCATIONS_PER_CLASS", "SCAN_BLOCK", "LocationReservoir", "ScannedLocations"]

LOCATIONS_PER_CLASS = 10_000
"""Positions kept per class and source for centred chips (nnU-Net keeps 10 000 too)."""

SCAN_BLOCK = 1024
"""Block side, in pixels, of the scan of a 2D source."""


class LocationReservoir:
    """A uniform random sample of at most ``limit`` positions per class, fed block by block."""

    def __init__(self, limit: int = LOCATIONS_PER_CLASS, seed: int = 0) -> None:
        self.limit = limit
        self.rng = np.random.default_rng(seed)
        self.kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # class -> (random keys, (N, dims) positions)

    def add(self, ids: np.ndarray, offset: Sequence[int]) -> None:
        """Add one block: ``ids`` class ids of the block (:data:`IGNORE` = unlabelled), ``offset`` its first position.

        Multi-label ``ids`` have one more (first) axis than ``offset``: 0/1 planes, one per class.
        """
        if ids.ndim == len(offset) + 1:
            for k in range(1, len(ids)):
                self.add(np.where(ids[k] == 1, k, 0), offset)
            return
        flat = np.flatnonzero((ids > 0) & (ids != IGNORE))
        values = ids.reshape(-1)[flat]
        for k in np.unique(values):
            where = flat[values == k]
            coords = np.stack(np.unravel_index(where, ids.shape), axis=1) + np.asarray(offset)
            keys = self.rng.random(len(where))
            if int(k) in self.kept:
                keys = np.concatenate([self.kept[int(k)][0], keys])
                coords = np.concatenate([self.kept[int(k)][1], coords])
            if len(keys) > self.limit:
                keep = np.argpartition(keys, self.limit)[: self.limit]
                keys, coords = keys[keep], coords[keep]
            self.kept[int(k)] = (keys, coords)

    def result(self) -> dict[int, np.ndarray]:
        """Class -> positions ``(N, dims)`` int64, in key order (a random order), classes sorted."""
        return {k: coords[np.argsort(keys)].astype(np.int64) for k, (keys, coords) in sorted(self.kept.items())}


class ScannedLocations:
    """Mixin for 2D chip sources: :meth:`class_locations` from one scan of the source in blocks.

    Put it before :class:`~segflow.training.sources.ChipSource` among the bases; the source's
    ``read_inside`` gives the labels.
    """

    spatial_shape: tuple[int, ...]
    _scanned: dict[int, np.ndarray] | None = None

    if TYPE_CHECKING:
        def read_inside(self, start: Start, shape: tuple[int, ...]) -> Chip: ...

    def class_locations(self) -> dict[int, np.ndarray]:
        """Up to :data:`LOCATIONS_PER_CLASS` positions ``(N, 2)`` per class > 0 present (scanned once)."""
        if self._scanned is None:
            reservoir = LocationReservoir()
            rows, cols = self.spatial_shape
            for y in range(0, rows, SCAN_BLOCK):
                for x in range(0, cols, SCAN_BLOCK):
                    shape = (min(SCAN_BLOCK, rows - y), min(SCAN_BLOCK, cols - x))
                    reservoir.add(np.asarray(self.read_inside((y, x), shape).labels), (y, x))
            self._scanned = reservoir.result()
        return self._scanned
