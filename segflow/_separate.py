"""The watershed separation of :mod:`segflow.postprocess`, and the source / output helpers it shares with
that module. Import the public names from :mod:`segflow.postprocess`; the definitions and the argument
for their chunk invariance are in its docstring.

Axis order: the spatial axes of the labels (``Y, X`` or ``Z, Y, X``); distances in pixels (voxels).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree
from skimage.measure import label as label_regions
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from .errors import ConfigError, InputError, SegflowWarning
from .instances import MAX_ID, Instances, Reader, _measure, _read, label_instances, reader_for
from .io.mask_store import MaskStore
from .labels import LABEL_NODATA
from .tiling import Box, ChunkGrid

__all__ = ["Separation", "ball", "edt_markers", "separate", "split_component"]


# ----------------------------------------------------------------------------- shared


def _source(source: Any) -> Reader:
    return reader_for(source.labels if isinstance(source, MaskStore) else source)


def _check_out(source: Any, out: Any, dtype: type) -> tuple[int, ...]:
    shape = tuple(int(s) for s in out.shape)
    src = source.labels if isinstance(source, MaskStore) else source
    if src is out:
        raise ConfigError("out is the input array; post-processing reads halos of the unchanged input, so give a "
                          "separate output array of the same shape")
    if hasattr(src, "shape") and tuple(src.shape) != shape:
        raise ConfigError(f"input is {tuple(src.shape)} but out is {shape}; give an output of the input's shape")
    if not np.can_cast(dtype, np.dtype(out.dtype)):
        raise ConfigError(f"out has dtype {out.dtype}, which cannot hold {np.dtype(dtype).name}; create it as "
                          f"{np.dtype(dtype).name}")
    return shape


def _grow(box: Box, halo: int, shape: Sequence[int]) -> Box:
    """``box`` grown by ``halo`` on every side, clipped to the scene."""
    stop = tuple(min(b + halo, n) for b, n in zip(box.stop, shape, strict=True))
    return Box(tuple(max(a - halo, 0) for a in box.start), stop)


def _radius(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ConfigError(f"{name} must be a radius in whole pixels >= 0 (0: none), got {value!r}")
    return int(value)


def _class_list(classes: Sequence[int], name: str) -> list[int]:
    out = [int(c) for c in classes]
    if not out or any(not 0 <= c < LABEL_NODATA for c in out) or len(set(out)) != len(out):
        raise ConfigError(f"{name} must be distinct class values 0..{LABEL_NODATA - 1} (at least one), got "
                          f"{list(classes)}")
    return out


def ball(radius: int, ndim: int = 2) -> np.ndarray:
    """The footprint ``{d : |d|² <= radius²}``, bool, shape ``(2r + 1,) * ndim`` (skimage's ``disk`` in 2D)."""
    grid = np.indices((2 * radius + 1,) * ndim) - radius
    return np.asarray((grid**2).sum(axis=0) <= radius * radius)


# ----------------------------------------------------------------------------- watershed separation


def edt_markers(mask: np.ndarray, distance: np.ndarray, *, min_distance: float, min_depth: float = 1.0
                ) -> tuple[np.ndarray, int]:
    """Watershed markers of one object: int32 labels ``1..n`` (0 elsewhere) and ``n``.

    ``mask``: the object's pixels; ``distance``: its EDT. The maxima are the h-maxima of the EDT with
    ``h = min_depth`` px (skimage's ``h_maxima``, full connectivity, computed inside the object only):
    plateaus that rise at least ``min_depth`` above the saddle towards any higher maximum, so one round
    or elongated object (whose EDT ridge is one plateau) and discretisation ripples give one maximum,
    while a neck between two bodies gives none. Maxima closer than ``min_distance`` px (Euclidean,
    between their nearest pixels) are one marker, so an object whose pixels all lie within
    ``min_distance`` of each other is never split. Markers are numbered in raster order of their first pixel.
    """
    inside = np.where(mask, distance, -(min_depth + 2.0))  # paths through the outside never win
    peaks = h_maxima(inside, min_depth).astype(bool) & mask
    plateaus, n = ndimage.label(peaks, np.ones((3,) * mask.ndim, bool))
    if n < 2:
        return plateaus.astype(np.int32), n
    coords = np.argwhere(peaks)
    pairs = cKDTree(coords).query_pairs(r=float(min_distance), output_type="ndarray")
    group = plateaus[tuple(coords.T)]
    graph = sparse.coo_array((np.ones(len(pairs), np.int8), (group[pairs[:, 0]] - 1, group[pairs[:, 1]] - 1)),
                             shape=(n, n))
    count, merged = csgraph.connected_components(graph, directed=False)  # numbered by lowest plateau: raster order
    table = np.concatenate([[0], merged + 1]).astype(np.int32)
    return table[plateaus], int(count)


def _close_peaks(mask: np.ndarray, distance: np.ndarray, min_distance: float) -> bool:
    """Whether all pixels of ``mask`` whose EDT is >= that of their ``3^n`` neighbours lie within ``min_distance``
    of each other (bounding-box diagonal). The h-maxima are among those pixels, so then they form one marker:
    a cheap exact shortcut past the reconstruction of h_maxima, which costs most of the time."""
    inside = np.where(mask, distance, -1.0)
    top = np.argwhere(mask & (inside == ndimage.maximum_filter(inside, size=3)))
    return bool(((top.max(axis=0) - top.min(axis=0)) ** 2).sum() <= float(min_distance) ** 2)


def split_component(mask: np.ndarray, *, min_distance: float, min_depth: float = 1.0,
                    connectivity: int = 1) -> tuple[np.ndarray, int]:
    """The parts of one connected object: int32 labels ``1..n`` over ``mask``'s array (0 outside) and ``n``.

    The EDT of ``mask`` (distance to the nearest pixel of the array not in it), markers from
    :func:`edt_markers`, then ``skimage.segmentation.watershed(-edt, markers, mask=mask)`` with
    ``connectivity``; each watershed region's connected pieces (the same connectivity) are the parts, so
    every part is connected. One marker (or an object filling the whole array, which has no EDT) gives
    one part. Give ``mask`` with a 1-px frame around the object (or the scene edge) for the EDT to be exact.
    """
    if mask.all():
        return mask.astype(np.int32), 1
    distance = ndimage.distance_transform_edt(mask)
    if _close_peaks(mask, distance, min_distance):
        return mask.astype(np.int32), 1
    markers, n = edt_markers(mask, distance, min_distance=min_distance, min_depth=min_depth)
    if n < 2:
        return mask.astype(np.int32), 1
    regions = watershed(-distance, markers, mask=mask, connectivity=connectivity)
    parts, count = label_regions(regions, background=0, return_num=True, connectivity=connectivity)
    return parts.astype(np.int32), int(count)


@dataclass(frozen=True)
class Separation:
    """What :func:`separate` did. ``instances``: measures of the ids written to ``out`` (row i = id i + 1).
    ``parent`` (M,): the component (id in ``components``) each instance comes from. ``split``: ids of the
    components split into two or more instances. ``too_large``: ids of the components left unsplit because
    their bounding box + 1 px exceeds the window."""

    instances: Instances
    parent: np.ndarray
    split: np.ndarray
    too_large: np.ndarray


def _batches(grid: ChunkGrid, first: np.ndarray, start: np.ndarray, stop: np.ndarray, todo: np.ndarray
             ) -> Iterator[tuple[Box, list[int]]]:
    """Read boxes and the components (rows) processed from each. The components whose box starts in a
    chunk and ends within a quarter chunk past it share one read; the others are read alone."""
    spill = np.maximum(np.asarray(grid.chunk) // 4, 1)
    home: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for k in todo.tolist():
        index = tuple(int(v) for v in first[k] // grid.chunk)
        if np.all(stop[k] <= np.asarray(grid.box(index).stop) + spill):
            home[index].append(k)
        else:
            yield Box(tuple(start[k].tolist()), tuple(stop[k].tolist())), [k]
    for members in home.values():
        yield Box(tuple(start[members].min(0).tolist()), tuple(stop[members].max(0).tolist())), members


def separate(labels: Any, components: Any, out: Any, chunk: int | Sequence[int], *, things: Sequence[int],
             min_distance: float, min_depth: float = 1.0, window: int | Sequence[int] = 2048, connectivity: int = 1,
             values: Mapping[str, Any] | None = None) -> Separation:
    """Split touching objects of the ``things`` classes of ``labels`` by an EDT watershed; ids into ``out``.

    ``components``: a writable uint32 array of the labels' shape that receives the connected components
    (:func:`segflow.instances.label_instances` with ``connectivity``, kept as they are); ``out``: another
    that receives the separated instance ids (0 = none). Each component whose bounding box + 1 px fits
    ``window`` (px per axis) is split with :func:`split_component` (``min_distance``, ``min_depth`` in
    px) in that box alone. Memory: about 120 bytes per pixel of the largest such box, plus 8 bytes per
    pixel of a chunk grown by a quarter (small components are read together, by chunk). ``values``: named
    value sources whose sum and maximum are kept per instance, as in ``label_instances``. Ids are
    numbered in raster order of first pixels; the result does not depend on ``chunk``.
    """
    shape = _check_out(labels, out, np.uint32)
    if _check_out(labels, components, np.uint32) != shape or components is out:
        raise ConfigError("components and out must be two different arrays of the labels' shape; create one uint32 "
                          "array for each")
    if not math.isfinite(min_distance) or min_distance < 0 or not math.isfinite(min_depth) or min_depth <= 0:
        raise ConfigError(f"min_distance must be >= 0 and min_depth > 0 px, got {min_distance} and {min_depth}")
    win = np.asarray([window] * len(shape) if isinstance(window, int | np.integer) else window, dtype=np.int64)
    if win.shape != (len(shape),) or (win < 3).any():
        raise ConfigError(f"window must be one size or one per axis ({len(shape)}), each at least 3 px, got {window}")
    grid = ChunkGrid.create(shape, chunk)
    sources = {name: reader_for(src) for name, src in (values or {}).items()}
    table = label_instances(_source(labels), components, chunk, things, connectivity=connectivity, values=values)
    m = len(table)
    start = np.maximum(table.bbox_start - 1, 0)
    stop = np.minimum(table.bbox_stop + 1, np.asarray(shape))
    fits = ((stop - start) <= win).all(axis=1)
    reach = ((table.bbox_stop - table.bbox_start - 1) ** 2).sum(axis=1) > float(min_distance) ** 2
    todo = np.flatnonzero(fits & reach)  # a component within min_distance of itself has one marker
    read_ids = reader_for(components)
    parts: list[Any] = []
    parent: list[np.ndarray] = []
    split: list[int] = []
    next_id = m + 1  # provisional ids of parts follow the component ids
    for batch, members in _batches(grid, table.bbox_start, start, stop, todo):
        ids = _read(read_ids, batch, "components")
        data = {name: _read(r, batch, f"value source {name!r}") for name, r in sources.items()} if sources else {}
        written = None
        for k in members:
            sub = Box(tuple(start[k].tolist()), tuple(stop[k].tolist()))
            where = sub.relative_to(batch)
            mask = ids[where] == k + 1
            local, n = split_component(mask, min_distance=min_distance, min_depth=min_depth,
                                       connectivity=connectivity)
            if n < 2:
                continue
            if next_id - 1 + n > MAX_ID:
                raise InputError(f"more than {MAX_ID} instances do not fit uint32 ids; label a smaller region")
            owner = np.full(n, table.class_id[k], np.int64)
            parts.append(_measure(local, owner, sub, shape, {a: v[where] for a, v in data.items()}))
            parent.append(np.full(n, k + 1, np.int64))
            split.append(k + 1)
            if written is None:
                written = np.asarray(out[batch.slices]).astype(np.uint32)
            view = written[where]
            view[mask] = local[mask].astype(np.uint32) + np.uint32(next_id - 1)
            next_id += n
        if written is not None:
            out[batch.slices] = written
    return _renumber(table, parts, parent, split, fits, components, out, grid)


def _columns(table: Instances, rows: np.ndarray) -> dict[str, Any]:
    return {"class_id": table.class_id[rows], "voxels": table.voxels[rows], "first": table.first[rows],
            "centroid": table.centroid[rows], "bbox_start": table.bbox_start[rows],
            "bbox_stop": table.bbox_stop[rows], "sums": {k: v[rows] for k, v in table.sums.items()},
            "maxima": {k: v[rows] for k, v in table.maxima.items()}}


def _piece_columns(pieces: Any) -> dict[str, Any]:
    """The columns of the measures of :func:`segflow.instances._measure` (one object's parts)."""
    return {"class_id": pieces.class_id, "voxels": pieces.voxels, "first": pieces.first,
            "centroid": pieces.coord_sum / np.maximum(pieces.voxels, 1)[:, None], "bbox_start": pieces.lo,
            "bbox_stop": pieces.hi + 1, "sums": pieces.sums, "maxima": pieces.maxima}


def _ordered(columns: list[dict[str, Any]]) -> tuple[Instances, np.ndarray]:
    """The rows of ``columns`` concatenated and sorted by first pixel, and that order."""
    def cat(name: str, key: str | None = None) -> np.ndarray:
        return np.concatenate([c[name] if key is None else c[name][key] for c in columns])

    first = cat("first")
    order = np.argsort(first, kind="stable")
    names = list(columns[0]["sums"])
    return Instances(class_id=cat("class_id")[order], voxels=cat("voxels")[order], first=first[order],
                     centroid=cat("centroid")[order], bbox_start=cat("bbox_start")[order],
                     bbox_stop=cat("bbox_stop")[order], sums={k: cat("sums", k)[order] for k in names},
                     maxima={k: cat("maxima", k)[order] for k in names}), order


def _renumber(table: Instances, parts: list[Any], parent: list[np.ndarray], split: list[int], fits: np.ndarray,
              components: Any, out: Any, grid: ChunkGrid) -> Separation:
    """Order the components left whole and the parts by first pixel; rewrite ``out`` with the final ids.

    Provisional ids: a whole component keeps its id (``out`` is read from ``components`` there), parts
    have ``len(table) + 1, ...`` in the order they were made (already in ``out``)."""
    m = len(table)
    whole = np.ones(m, bool)
    whole[np.asarray(split, np.int64) - 1] = False
    rows = np.flatnonzero(whole)
    instances, order = _ordered([_columns(table, rows), *(_piece_columns(p) for p in parts)])
    count = len(order)
    provisional = np.concatenate([rows + 1, np.arange(m + 1, m + 1 + count - len(rows))]).astype(np.int64)
    lookup = np.zeros(m + count - len(rows) + 1, np.uint32)
    lookup[provisional[order]] = np.arange(1, count + 1, dtype=np.uint32)
    is_split = np.concatenate([[False], ~whole])
    for _, box in grid:
        comp = np.asarray(components[box.slices]).astype(np.int64)
        mine = is_split[comp]
        prov = np.where(mine, np.asarray(out[box.slices]).astype(np.int64), comp) if mine.any() else comp
        out[box.slices] = lookup[prov]
    too_large = np.flatnonzero(~fits) + 1
    if len(too_large):
        largest = (table.bbox_stop - table.bbox_start)[too_large - 1].max(axis=0) + 2
        warnings.warn(f"{len(too_large)} components were left unsplit because their bounding box + 1 px exceeds the "
                      f"separation window (largest {'x'.join(map(str, largest))} px); raise window to split them "
                      "(memory about 120 bytes per window pixel)", SegflowWarning, stacklevel=3)
    return Separation(instances, np.concatenate([rows + 1, *parent])[order], np.asarray(sorted(split), np.int64),
                      too_large)
