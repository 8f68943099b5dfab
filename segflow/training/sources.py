"""The base of every training-chip source: :class:`Chip`, :class:`ChipSource` and a lazy scene over one.

A source is a labelled image of ``spatial_shape`` (``(Y, X)`` or ``(Z, Y, X)``) with
``num_bands`` channels; ``source.read(start, shape)`` returns a :class:`Chip` padded with
ignored pixels (:data:`IGNORE`) where the box leaves the source. The sources themselves are in
:mod:`segflow.training.chips` (rasters, vectors, synthetic data) and :mod:`segflow.training.nifti` (NIfTI
pairs on the model grid).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import dask.array as da
import numpy as np
import numpy.typing as npt

from ..array_keys import bounding_read
from ..scene import Scene
from .config import IGNORE_INDEX

__all__ = ["IGNORE", "Chip", "ChipSource", "Start", "source_scene"]

IGNORE = IGNORE_INDEX
"""Label of pixels that carry no label (nodata, unlabelled, padding)."""

Start = tuple[int, ...]


class Chip(NamedTuple):
    """One chip: ``image`` ``(C, *shape)`` float32, ``labels`` ``shape`` uint8, ``valid`` ``shape`` bool.

    Labels of a multi-label source (``label_planes`` K > 0) are ``(K, *shape)``: one 0/1 plane per class.
    """

    image: npt.NDArray[np.float32]
    labels: npt.NDArray[np.uint8]
    valid: npt.NDArray[np.bool_]


class ChipSource:
    """Base of every source: a labelled image with ``spatial_shape`` and ``num_bands`` channels."""

    spatial_shape: tuple[int, ...]
    num_bands: int
    description: str
    label_planes: int = 0
    """0: labels are class indices of the chip's ``shape``; K > 0: ``(K, *shape)`` 0/1 planes, one per class."""
    has_instances: bool = False
    """Whether :meth:`read_instances` gives instance ids (for border weights)."""

    def read_instances_inside(self, start: Start, shape: tuple[int, ...]) -> npt.NDArray[np.int64]:
        """Instance ids of a box inside the source (sources with ``has_instances`` implement this)."""
        raise NotImplementedError(f"{self.description} has no instance ids")

    def read_instances(self, start: Start, shape: tuple[int, ...]) -> npt.NDArray[np.int64]:
        """Instance ids ``shape`` int64 of the box ``[start, start + shape)``: 0 = no instance (and outside).

        Ids are distinct per instance within the box; the same instance keeps its id in every box.
        """
        lo = [max(0, s) for s in start]
        hi = [min(s + n, size) for s, n, size in zip(start, shape, self.spatial_shape, strict=True)]
        ids = np.zeros(shape, dtype=np.int64)
        if all(h > a for a, h in zip(lo, hi, strict=True)):
            where = tuple(slice(a - s, h - s) for a, h, s in zip(lo, hi, start, strict=True))
            ids[where] = self.read_instances_inside(tuple(lo), tuple(h - a for a, h in zip(lo, hi, strict=True)))
        return ids

    def read_inside(self, start: Start, shape: tuple[int, ...]) -> Chip:
        """Read a box that lies inside the source (subclasses implement this)."""
        raise NotImplementedError

    def read(self, start: Start, shape: tuple[int, ...]) -> Chip:
        """Read the box ``[start, start + shape)``; parts outside the source are padded as ignored.

        Parameters
        ----------
        start : tuple of int
            First pixel of the box, one value per spatial axis (may be beyond the source).
        shape : tuple of int
            Box size per spatial axis.

        Returns
        -------
        Chip
            ``image`` ``(C, *shape)`` float32 (0 where padded), ``labels`` ``shape`` (or
            ``(label_planes, *shape)``) uint8 (:data:`IGNORE` where padded or unlabelled), ``valid``
            ``shape`` bool.
        """
        lo = [max(0, s) for s in start]
        hi = [min(s + n, size) for s, n, size in zip(start, shape, self.spatial_shape, strict=True)]
        inside = all(a == s for a, s in zip(lo, start, strict=True))
        if inside and all(h - s == n for h, s, n in zip(hi, start, shape, strict=True)):
            return self.read_inside(tuple(start), tuple(shape))
        image = np.zeros((self.num_bands, *shape), dtype=np.float32)
        planes = (self.label_planes,) if self.label_planes else ()
        labels = np.full((*planes, *shape), IGNORE, dtype=np.uint8)
        valid = np.zeros(shape, dtype=bool)
        if all(h > a for a, h in zip(lo, hi, strict=True)):
            inner = self.read_inside(tuple(lo), tuple(h - a for a, h in zip(lo, hi, strict=True)))
            where = tuple(slice(a - s, h - s) for a, h, s in zip(lo, hi, start, strict=True))
            image[(slice(None), *where)] = inner.image
            labels[(slice(None),) * len(planes) + where] = inner.labels
            valid[where] = inner.valid
        return Chip(image, labels, valid)

    def close(self) -> None:
        """Release open files (a source can still be read afterwards; files reopen on demand)."""

    def class_locations(self) -> dict[int, np.ndarray] | None:
        """Voxel positions ``(N, dims)`` per class for foreground oversampling, or None (not known).

        Positions are in this source's spatial grid (``start`` coordinates); a sample of each
        class suffices. Sources that return None are sampled uniformly only.
        """
        return None


# --------------------------------------------------------------------------- sources as lazy scenes


class _SourceArray:
    """Array-like over a source for dask: ``[c, *spatial slices]`` reads one box (image or validity)."""

    def __init__(self, source: ChipSource, part: str):
        self.source, self.part = source, part
        spatial = source.spatial_shape
        self.shape = (source.num_bands, *spatial) if part == "image" else spatial
        self.dtype = np.dtype(np.float32 if part == "image" else bool)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        """One read of the source for ``key`` (:func:`~segflow.array_keys.bounding_read`: indices and steps too)."""
        spans, local = bounding_read(key, self.shape)
        spatial = spans[-len(self.source.spatial_shape):]
        if not all(spans):
            return np.empty([len(s) for s in spans], dtype=self.dtype)[local]
        chip = self.source.read(tuple(s.start for s in spatial), tuple(len(s) for s in spatial))
        if self.part == "image":
            return chip.image[spans[0].start:spans[0].stop][local]
        return chip.valid[local]


def source_scene(source: ChipSource, chunk: int = 1024) -> Scene:
    """A lazy :class:`~segflow.scene.Scene` over a source's image (read chunk by chunk)."""
    dims = len(source.spatial_shape)
    chunks = tuple(min(chunk, s) for s in source.spatial_shape)
    data = da.from_array(_SourceArray(source, "image"), chunks=(source.num_bands, *chunks), asarray=True,
                         lock=False, meta=np.empty((0,) * (dims + 1), dtype=np.float32))
    mask = da.from_array(_SourceArray(source, "valid"), chunks=chunks, asarray=True, lock=False,
                         meta=np.empty((0,) * dims, dtype=bool))
    names = tuple(f"band{i + 1}" for i in range(source.num_bands))
    return Scene(data=data, axes="CYX" if dims == 2 else "CZYX", band_names=names, mask=mask,
                 source=source.description)
