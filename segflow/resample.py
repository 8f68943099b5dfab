"""Volumes on the model's grid and back: reorient to its axis codes, resample to its spacing, by chunks.

A 3D model package may declare the voxel ``spacing`` it was made for and its ``orientation``
(see :class:`~segflow.models.package.ModelSpec`). The input volume is then seen through a
*model grid*: its voxel axes permuted and flipped so that they grow toward the model's axis
codes (the closest ones for an oblique volume, which stays oblique, as MONAI's
``Orientation`` and nibabel's ``as_closest_canonical`` do), with the model's spacing and the
same physical field of view. Nothing is copied: :func:`model_scene` is a lazy scene whose
chunks read only the input region they need and interpolate it (linear for intensities,
nearest for validity).

The engine runs on that scene into a store on the model grid, with its class scores; then
:func:`scores_to_source` brings the result back onto the input grid chunk by chunk: the scores
are interpolated linearly at every input voxel and the labels are their arg-max (as nnU-Net
does), so ``labels.nii.gz`` has exactly the input's shape and affine.

Index conventions: arrays and boxes are ``(z, y, x)``; a :class:`GridMap` holds, per model-grid
axis ``t``, the input axis ``axis[t]`` it runs along and ``source = scale[t] * t_index +
offset[t]`` (input voxel index, continuous; voxel centres at integers).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import dask.array as da
import numpy as np
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from .geometry import VolumeGeometry
from .io.mask_store import MaskStore
from .labels import LABEL_NODATA
from .scene import Scene
from .tiling import Box, ChunkGrid

__all__ = ["GridMap", "model_grid", "model_scene", "read_model_box", "scores_to_source", "to_input_grid"]

_TOLERANCE = 1e-3  # relative difference of spacing below which no resampling is done


@dataclass(frozen=True)
class GridMap:
    """The model grid of a volume: its shape and, per model-grid axis, the input axis, scale and offset."""

    source_shape: tuple[int, int, int]
    shape: tuple[int, int, int]
    axis: tuple[int, int, int]
    scale: tuple[float, float, float]
    offset: tuple[float, float, float]
    geometry: VolumeGeometry

    def to_source(self, index: np.ndarray, t: int) -> np.ndarray:
        """Input voxel coordinates (along ``axis[t]``) of model-grid indices ``index`` along axis ``t``."""
        return self.scale[t] * index + self.offset[t]

    def to_model(self, index: np.ndarray, t: int) -> np.ndarray:
        """Model-grid coordinates along axis ``t`` of input indices ``index`` along ``axis[t]``."""
        return (index - self.offset[t]) / self.scale[t]


def _zyx_to_xyz(affine: np.ndarray) -> np.ndarray:
    return affine[:, [2, 1, 0, 3]]


def model_grid(geometry: VolumeGeometry, shape: Sequence[int], spacing: Sequence[float] | None,
               orientation: str | None) -> GridMap | None:
    """The model grid for a volume of ``shape`` (z, y, x), or None when the volume is already on it.

    ``spacing`` is the model's ``(dz, dy, dx)`` in mm (None: keep the input's), ``orientation``
    its axis codes over ``(x, y, z)`` (None: keep the input's axis order and directions).
    """
    affine = np.asarray(geometry.affine, dtype=float)
    src_shape = tuple(int(s) for s in shape)
    src_spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))  # (dz, dy, dx) from the columns
    if orientation is None:
        moves = [(t, 1.0) for t in range(3)]  # model axis t runs along input axis t, same direction
    else:  # nibabel works over (x, y, z): go there and back
        ornt = ornt_transform(io_orientation(_zyx_to_xyz(affine)), axcodes2ornt(tuple(orientation)))
        to_model = {2 - int(i): (2 - int(target), float(flip)) for i, (target, flip) in enumerate(ornt)}
        moves = [next((s, f) for s, (t2, f) in to_model.items() if t2 == t) for t in range(3)]
    axis = tuple(s for s, _ in moves)
    target_spacing = [float(spacing[t]) if spacing is not None else float(src_spacing[axis[t]]) for t in range(3)]
    if axis == (0, 1, 2) and all(f > 0 for _, f in moves) and all(
            abs(target_spacing[t] - src_spacing[t]) <= _TOLERANCE * src_spacing[t] for t in range(3)):
        return None
    out_shape, scale, offset = [], [], []
    for t, (s, flip) in enumerate(moves):
        ratio = target_spacing[t] / float(src_spacing[s])
        n = max(1, round(src_shape[s] / ratio))
        out_shape.append(n)
        if flip > 0:  # voxel edges of the field of view stay put: centre t ↦ (t + ½)·ratio − ½
            scale.append(ratio)
            offset.append(0.5 * ratio - 0.5)
        else:
            scale.append(-ratio)
            offset.append(src_shape[s] - 0.5 - 0.5 * ratio)
    matrix = np.zeros((4, 4))
    for t in range(3):
        matrix[axis[t], t] = scale[t]
        matrix[axis[t], 3] = offset[t]
    matrix[3, 3] = 1.0
    target_affine = affine @ matrix
    geometry_out = VolumeGeometry.from_matrix(target_affine.tolist(), target_spacing, geometry.frame)
    return GridMap(src_shape, tuple(out_shape), axis, tuple(scale), tuple(offset),  # type: ignore[arg-type]
                   geometry_out)


def _source_box(grid: GridMap, box: Box, margin: int) -> tuple[Box, list[np.ndarray]]:
    """The input region a model-grid ``box`` needs, and the input coordinates of its voxels per model axis."""
    coords = [grid.to_source(np.arange(a, b, dtype=float), t)
              for t, (a, b) in enumerate(zip(box.start, box.stop, strict=True))]
    start, stop = [0, 0, 0], [0, 0, 0]
    for t, c in enumerate(coords):
        s = grid.axis[t]
        start[s] = max(0, math.floor(float(c.min())) - margin)
        stop[s] = min(grid.source_shape[s], math.ceil(float(c.max())) + 1 + margin)
        if stop[s] <= start[s]:  # a model voxel beyond the input's edge: take the nearest input voxel
            start[s] = min(max(0, start[s]), grid.source_shape[s] - 1)
            stop[s] = start[s] + 1
    return Box(tuple(start), tuple(stop)), coords


def _sample(region: np.ndarray, region_box: Box, axes: Sequence[int], coords: Sequence[np.ndarray],
            order: int) -> np.ndarray:
    """Interpolate ``region`` (spatial axes in its own order) at the outer product of ``coords``.

    Output axis ``t`` runs along region axis ``axes[t]``, sampled at the coordinates ``coords[t]``
    (in the frame ``region_box`` is given in). Separable: one 1-D pass per axis, linear
    (``order`` 1) or nearest (0), edges replicated.
    """
    out = np.moveaxis(region, list(axes), [0, 1, 2])
    for t in range(3):
        out = _along(out, t, coords[t] - region_box.start[axes[t]], order)
    return out


def _along(values: np.ndarray, axis: int, positions: np.ndarray, order: int) -> np.ndarray:
    """``values`` interpolated along ``axis`` at ``positions`` (index units)."""
    n = values.shape[axis]
    if order == 0:
        return np.take(values, np.clip(np.rint(positions).astype(np.int64), 0, n - 1), axis=axis)
    p = np.clip(positions, 0, n - 1)
    i0 = np.floor(p).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    shape = [1] * values.ndim
    shape[axis] = len(p)
    w = (p - i0).astype(np.float32).reshape(shape)
    return np.take(values, i0, axis=axis) * (1 - w) + np.take(values, i1, axis=axis) * w


def model_scene(scene: Scene, grid: GridMap, chunk: int = 128) -> Scene:
    """The volume ``scene`` seen on ``grid``: lazy, float32, validity resampled by nearest neighbour."""
    chunks = tuple(min(chunk, n) for n in grid.shape)
    bands = scene.num_bands

    def block(block_info: dict | None = None) -> np.ndarray:
        loc = block_info[None]["array-location"]  # type: ignore[index]
        box = Box(tuple(a for a, _ in loc[1:]), tuple(b for _, b in loc[1:]))
        return _read_model(scene, grid, box)

    data = da.map_blocks(block, dtype=np.float32, chunks=((bands,), *[_splits(n, c) for n, c in
                                                                      zip(grid.shape, chunks, strict=True)]),
                         meta=np.empty((0, 0, 0, 0), np.float32))
    mask = None
    if scene.valid is not None:
        def valid_block(block_info: dict | None = None) -> np.ndarray:
            loc = block_info[None]["array-location"]  # type: ignore[index]
            box = Box(tuple(a for a, _ in loc), tuple(b for _, b in loc))
            return _read_valid(scene, grid, box)

        mask = da.map_blocks(valid_block, dtype=bool, chunks=[_splits(n, c) for n, c in
                                                              zip(grid.shape, chunks, strict=True)],
                             meta=np.empty((0, 0, 0), bool))
    meta = {**scene.meta, "model_grid": {"shape": list(grid.shape), "spacing": list(grid.geometry.spacing)}}
    return replace(scene, data=data, nodata=None, mask=mask, volume=grid.geometry, meta=meta)


def _splits(n: int, c: int) -> tuple[int, ...]:
    return tuple(min(c, n - a) for a in range(0, n, c))


def _read_model(scene: Scene, grid: GridMap, box: Box) -> np.ndarray:
    region_box, coords = _source_box(grid, box, margin=1)
    data, _ = scene.read(region_box)
    data = np.nan_to_num(data.astype(np.float32, copy=False))
    return np.stack([_sample(c, region_box, grid.axis, coords, order=1) for c in data]).astype(np.float32)


def _read_valid(scene: Scene, grid: GridMap, box: Box) -> np.ndarray:
    region_box, coords = _source_box(grid, box, margin=0)
    _, valid = scene.read(region_box)
    if valid is None:
        return np.ones(box.shape, dtype=bool)
    return _sample(valid, region_box, grid.axis, coords, order=0)


def read_model_box(scene: Scene, grid: GridMap, box: Box, *, labels: bool = False
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Read one model-grid ``box`` of ``scene``, reading only the input region it needs (one read).

    Intensities (``labels`` False) are interpolated linearly as :func:`model_scene` does
    (float32, NaN as 0); a label volume (``labels`` True) is sampled by nearest neighbour, so
    every value is one the input holds, in the input's dtype. Returns ``(C, *box.shape)`` data
    and the validity ``box.shape`` by nearest neighbour (None when every input voxel is valid).
    The region read is the box's input extent plus one voxel on each side.
    """
    region_box, coords = _source_box(grid, box, margin=1)
    data, valid = scene.read(region_box)
    if labels:
        out = np.stack([_sample(c, region_box, grid.axis, coords, order=0) for c in data])
    else:
        data = np.nan_to_num(data.astype(np.float32, copy=False))
        out = np.stack([_sample(c, region_box, grid.axis, coords, order=1) for c in data]).astype(np.float32)
    return out, None if valid is None else _sample(valid, region_box, grid.axis, coords, order=0)


def scores_to_source(grid: GridMap, read_scores: Callable[[Box], np.ndarray], box: Box,
                     valid: np.ndarray | None, thresholds: Sequence[float] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores on the input grid for the input ``box``, from the model grid's scores.

    ``read_scores(model_box)`` returns ``(K, *model_box.shape)`` scores (NaN where the model grid
    had no data). Scores are interpolated linearly at the input voxels' model-grid coordinates;
    labels are their arg-max, :data:`LABEL_NODATA` where ``valid`` is False; with ``thresholds`` (a
    multi-label model) the ``(K, *box.shape)`` planes of :func:`segflow.stitch.threshold_labels` instead.
    """
    # model-grid coordinates of the input voxels, per model axis t (input axis grid.axis[t])
    coords = [grid.to_model(np.arange(box.start[grid.axis[t]], box.stop[grid.axis[t]], dtype=float), t)
              for t in range(3)]
    start = [max(0, math.floor(float(c.min())) - 1) for c in coords]
    stop = [min(n, math.ceil(float(c.max())) + 2) for c, n in zip(coords, grid.shape, strict=True)]
    start = [min(a, n - 1) for a, n in zip(start, grid.shape, strict=True)]
    stop = [max(b, a + 1) for a, b in zip(start, stop, strict=True)]
    model_box = Box(tuple(start), tuple(stop))
    scores = np.nan_to_num(read_scores(model_box).astype(np.float32, copy=False))
    # output axis s is input axis s, along which model axis inverse[s] runs
    inverse = [grid.axis.index(s) for s in range(3)]
    out = np.stack([_sample(k, model_box, inverse, [coords[t] for t in inverse], order=1) for k in scores])
    if thresholds is not None:
        import torch

        from .stitch import threshold_labels

        every = np.ones(box.shape, dtype=bool) if valid is None else valid
        planes = threshold_labels(torch.from_numpy(out), every, thresholds)
        if valid is not None:
            out[:, ~valid] = np.nan
        return planes, out
    labels = np.argmax(out, axis=0).astype(np.uint8)
    if valid is not None:
        labels[~valid] = LABEL_NODATA
        out[:, ~valid] = np.nan
    return labels, out


def to_input_grid(grid: GridMap, work: MaskStore, store: MaskStore, scene: Scene, chunks: ChunkGrid, *,
                  save_scores: bool, on_chunk: Callable[[], None] | None = None,
                  thresholds: Sequence[float] | None = None) -> int:
    """Fill ``store`` (the input grid) from ``work`` (the model grid, with scores), chunk by chunk.

    Each input chunk reads only the model-grid scores around it; chunks that already have a
    completion record (an earlier attempt) are skipped. Returns the number of chunks written.
    ``thresholds``: a multi-label model's, per class (see :func:`scores_to_source`).
    """
    scores = work.scores
    if scores is None:
        raise RuntimeError("the model-grid store has no scores to bring back")

    def read(box: Box) -> np.ndarray:
        return np.asarray(scores[(slice(None), *box.slices)])

    done, written = set(store.done()), 0
    for index, box in chunks:
        if index in done:
            continue
        t0 = time.perf_counter()
        valid = None if scene.valid is None else np.asarray(scene.valid[box.slices].compute(scheduler="threads"))
        labels, back = scores_to_source(grid, read, box, valid, thresholds)
        store.write(box, labels, back if save_scores else None, valid)
        store.mark_done(index, {"index": list(index), "box": [list(box.start), list(box.stop)],
                                "valid_pixels": int(box.size if valid is None else np.count_nonzero(valid)),
                                "seconds": round(time.perf_counter() - t0, 4), "from": "model grid"})
        written += 1
        if on_chunk is not None:
            on_chunk()
    return written
