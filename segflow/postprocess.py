"""Post-processing of label maps chunk by chunk, with results that do not depend on the chunk size.

Arrays are over the spatial axes of the labels in array order (``Y, X`` for rasters, ``Z, Y, X`` for
volumes); radii and distances are in pixels (voxels), Euclidean over array indices (isotropic, not map
units). Every function reads a source (a :class:`~segflow.io.mask_store.MaskStore`, an array-like or a
:data:`~segflow.instances.Reader`) region by region and writes another array (``out``, never the source:
later regions read halos of the unchanged input), so memory is bounded by a chunk plus its halo (or by
the ``window`` of :func:`separate`), never by the scene.

:func:`morphology` — per-class closing then opening with a disk (a ball in N-D) of radius ``r``:
``{d : |d|² <= r²}``, skimage's ``disk``/``ball``. Label-aware: every class's mask is smoothed from the
same input map, then combined (a pixel keeps its class if that class's smoothed mask holds it; else it
takes the first class of ``classes`` whose smoothed mask claims it; else a pixel of a listed class
becomes ``fill``; anything else is unchanged; nodata (255) is never changed and counts as in no class).
Each binary step is scipy's (``binary_dilation`` / ``binary_erosion`` with that footprint); the result
at a pixel depends on the input within ``2 * (closing + opening)`` px (dilation and erosion each look
``r`` away, closing and opening are two steps each), so each chunk is computed from the chunk grown by
that halo (:func:`morphology_halo`) and equals the whole-array result. The bound is reached: closing
fills ``p`` iff every disk holding ``p`` meets the class, and the disk centred ``r`` from ``p`` may meet
it only at the pixel ``2r`` from ``p`` beyond its centre (the tests build that case). Scene
borders: ``border="ignore"`` (default, skimage's ``mode="ignore"``): outside the scene is in no class
for dilation and in every class for erosion, so closing never removes and opening never adds pixels;
``border="zero"``: outside is in no class at every step (scipy's default ``border_value=0``), which makes
closing strip a band ``closing`` px wide from objects touching the scene edge.

:func:`separate` — touching objects of the thing classes split by a marker-controlled watershed on the
Euclidean distance transform (EDT), per connected component (:func:`segflow.instances.label_instances`):
see :func:`edt_markers` for the markers and :func:`split_component` for the split. A component's result
depends only on its own pixels, and its EDT only on its bounding box grown by 1 px (the nearest pixel
not in it lies there: clamping any outside pixel into that box brings it closer), so each component is
processed in that box alone: exact and independent of the chunking. Components whose box exceeds
``window`` are left unsplit and reported. Instance ids are renumbered ``1, 2, ...`` in raster (C) order
of each instance's first pixel, the convention of :mod:`segflow.instances`.

:func:`separate_by_boundary` — for models with a boundary/contact class: instances are the connected
components of the thing classes (boundary pixels are not thing pixels, so they separate), then each
boundary pixel joins the nearest instance within ``max_width`` px (ties: the smallest id) — a halo of
``max_width`` px per chunk makes it exact.

Written here rather than taken whole from a library: scipy and scikit-image give each step (binary
morphology, EDT, h-maxima, watershed) for one in-memory array; what is ours is only the chunk / halo /
window bookkeeping that makes the whole-scene result exact with bounded memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ._separate import (
    Separation,
    _check_out,
    _class_list,
    _grow,
    _radius,
    _source,
    ball,
    edt_markers,
    separate,
    split_component,
)
from .errors import ConfigError
from .instances import Instances, _measure, _read, label_instances, reader_for
from .labels import LABEL_NODATA
from .tiling import Box, ChunkGrid

__all__ = ["BORDERS", "BoundarySeparation", "Separation", "ball", "boundary_class", "edt_markers", "morphology",
           "morphology_box", "morphology_halo", "separate", "separate_by_boundary", "split_component"]

BORDERS = ("ignore", "zero")
BOUNDARY_NAMES = ("boundary", "contact")


# ----------------------------------------------------------------------------- morphology


def morphology_halo(*, opening: int, closing: int) -> int:
    """Pixels of input needed around a region for an exact result: ``2 * (opening + closing)``."""
    return 2 * (_radius(opening, "opening") + _radius(closing, "closing"))


def _smooth(mask: np.ndarray, closing: int, opening: int, border: str) -> np.ndarray:
    """Closing then opening of one binary mask; the erosion's border value follows ``border``."""
    outside = border == "ignore"
    if closing:
        footprint = ball(closing, mask.ndim)
        mask = ndimage.binary_erosion(ndimage.binary_dilation(mask, footprint), footprint, border_value=outside)
    if opening:
        footprint = ball(opening, mask.ndim)
        mask = ndimage.binary_dilation(ndimage.binary_erosion(mask, footprint, border_value=outside), footprint)
    return mask


def morphology_box(source: Any, box: Box, shape: Sequence[int], *, classes: Sequence[int], opening: int = 0,
                   closing: int = 0, fill: int = 0, border: str = "ignore", halo: int | None = None) -> np.ndarray:
    """The post-processed labels of ``box`` (uint8, ``box.shape``): one chunk of :func:`morphology`.

    Reads ``box`` grown by ``halo`` (default :func:`morphology_halo`, the exact one) from ``source``.
    """
    things = _class_list(classes, "classes")
    if border not in BORDERS:
        raise ConfigError(f"border must be one of {', '.join(BORDERS)}, got {border!r}")
    if isinstance(fill, bool) or not isinstance(fill, int | np.integer) or not 0 <= fill < LABEL_NODATA:
        raise ConfigError(f"fill must be a class value 0..{LABEL_NODATA - 1} (e.g. 0, the background), got {fill!r}")
    need = morphology_halo(opening=opening, closing=closing)
    outer = _grow(box, need if halo is None else halo, shape)
    labels = _read(_source(source), outer, "labels")
    inner = box.relative_to(outer)
    core = labels[inner]
    kept = np.zeros(core.shape, bool)  # the pixel's own class keeps it
    claim = np.zeros(core.shape, np.uint8)  # first listed class whose smoothed mask claims the pixel
    claimed = np.zeros(core.shape, bool)
    for c in things:
        mask = labels == c
        if not mask.any():  # smoothing nothing gives nothing
            continue
        smooth = _smooth(mask, closing, opening, border)[inner]
        own = core == c
        kept |= own & smooth
        new = smooth & ~own & ~claimed
        claim[new] = c
        claimed |= new
    result = core.copy()
    result[np.isin(core, things) & ~kept] = fill
    take = claimed & ~kept & (core != LABEL_NODATA)
    result[take] = claim[take]
    return result


def morphology(source: Any, out: Any, chunk: int | Sequence[int], *, classes: Sequence[int], opening: int = 0,
               closing: int = 0, fill: int = 0, border: str = "ignore") -> None:
    """Closing then opening of each of ``classes`` (disk radii in px), chunk by chunk from ``source`` into ``out``.

    ``source``: a mask store (its ``labels``), an array-like or a reader of uint8 labels (255 = nodata).
    ``out``: a writable uint8 array of the same shape, not the source. ``chunk``: processing chunk (memory
    is about 20 bytes per pixel of the chunk grown by :func:`morphology_halo`). ``fill``: the class that
    pixels removed by the opening (and claimed by no other class) become. ``border``: ``"ignore"`` or
    ``"zero"`` (module docstring). The result equals the whole-array computation whatever the chunk.
    """
    shape = _check_out(source, out, np.uint8)
    grid = ChunkGrid.create(shape, chunk)
    for _, box in grid:
        out[box.slices] = morphology_box(source, box, shape, classes=classes, opening=opening, closing=closing,
                                         fill=fill, border=border)


# ----------------------------------------------------------------------------- boundary class


def boundary_class(class_names: Sequence[str]) -> int | None:
    """The index of the class named "boundary" or "contact" (case-insensitive), None without one."""
    found = [i for i, n in enumerate(class_names) if str(n).strip().lower() in BOUNDARY_NAMES]
    if len(found) > 1:
        raise ConfigError(f"classes {[class_names[i] for i in found]} are all boundary classes; name only one "
                          f"{' or '.join(BOUNDARY_NAMES)}")
    return found[0] if found else None


@dataclass(frozen=True)
class BoundarySeparation:
    """What :func:`separate_by_boundary` did: ``instances`` (row i = id i + 1, boundary pixels included) and
    ``unassigned``, the boundary pixels with no instance within ``max_width`` px (left 0)."""

    instances: Instances
    unassigned: int


def _offsets_by_distance(radius: int, ndim: int) -> list[np.ndarray]:
    """Offsets ``d`` with ``0 < |d|² <= radius²``, grouped by ``|d|²`` ascending: ``(g, ndim)`` arrays."""
    offsets = np.argwhere(ball(radius, ndim)) - radius
    square = (offsets**2).sum(axis=1)
    return [offsets[square == s] for s in np.unique(square) if s > 0]


def _nearest(ids: np.ndarray, box: Box, outer: Box, todo: np.ndarray, groups: list[np.ndarray], width: int
             ) -> np.ndarray:
    """For each ``todo`` pixel of ``box``: the id (``ids`` over ``outer``, 0 = none) nearest to it within
    ``width`` px, ties to the smallest id; 0 where none is that near."""
    padded = np.zeros(tuple(s + 2 * width for s in box.shape), np.int64)  # outside the scene: no instance
    padded[tuple(slice(o - b + width, o - b + width + n) for o, b, n in zip(outer.start, box.start, outer.shape,
                                                                             strict=True))] = ids
    found = np.zeros(box.shape, np.int64)
    none = np.iinfo(np.int64).max
    for group in groups:
        best = np.full(box.shape, none, np.int64)
        for d in group:
            near = padded[tuple(slice(width + int(o), width + int(o) + n) for o, n in zip(d, box.shape, strict=True))]
            np.minimum(best, np.where(near > 0, near, none), out=best)
        new = todo & (best < none)
        found[new] = best[new]
        todo = todo & ~new
        if not todo.any():
            break
    return found


def separate_by_boundary(labels: Any, out: Any, chunk: int | Sequence[int], *, things: Sequence[int], boundary: int,
                         max_width: int, connectivity: int = 1, values: Mapping[str, Any] | None = None
                         ) -> BoundarySeparation:
    """Instances of the ``things`` classes separated by the model's ``boundary`` class (see :func:`boundary_class`).

    Instances are the connected components of the thing classes (``label_instances`` with
    ``connectivity``; boundary pixels are not thing pixels, so a boundary line separates); then every
    ``boundary`` pixel joins the instance with the nearest thing pixel within ``max_width`` px
    (Euclidean; ties: the smallest id), read with a halo of ``max_width`` px, so the result does not
    depend on ``chunk``. ``out``: a writable uint32 array (not the labels) receiving the ids, numbered in
    raster order of first pixels (boundary pixels included). Measures as ``label_instances``.
    """
    shape = _check_out(labels, out, np.uint32)
    width = _radius(max_width, "max_width")
    thing_ids = _class_list(things, "things")
    if boundary in thing_ids or not 0 <= int(boundary) < LABEL_NODATA:
        raise ConfigError(f"boundary must be a class value 0..{LABEL_NODATA - 1} that is not a thing class, got "
                          f"{boundary!r} with things {thing_ids}")
    read = _source(labels)
    sources = {name: reader_for(src) for name, src in (values or {}).items()}
    table = label_instances(read, out, chunk, thing_ids, connectivity=connectivity, values=values)
    grid = ChunkGrid.create(shape, chunk)
    groups = _offsets_by_distance(width, len(shape))
    added: list[Any] = []
    unassigned = 0
    read_out = reader_for(out)
    for _, box in grid:
        outer = _grow(box, width, shape)
        lab = _read(read, outer, "labels")
        todo = lab[box.relative_to(outer)] == boundary
        if not todo.any():
            continue
        ids = np.where(np.isin(lab, thing_ids), _read(read_out, outer, "out").astype(np.int64), 0)
        found = _nearest(ids, box, outer, todo, groups, width)
        unassigned += int((todo & (found == 0)).sum())
        if not found.any():
            continue
        chosen = np.unique(found[found > 0])
        local = np.where(found > 0, np.searchsorted(chosen, found) + 1, 0).astype(np.int32)
        data = {name: _read(r, box, f"value source {name!r}") for name, r in sources.items()}
        added.append((chosen, _measure(local, table.class_id[chosen - 1], box, shape, data)))
        chunk_ids = ids[box.relative_to(outer)]
        chunk_ids[found > 0] = found[found > 0]
        out[box.slices] = chunk_ids.astype(np.uint32)
    instances, order = _grown(table, added)
    if np.any(order != np.arange(len(order))):  # a boundary pixel came before its instance's first pixel
        lookup = np.zeros(len(order) + 1, np.uint32)
        lookup[order + 1] = np.arange(1, len(order) + 1, dtype=np.uint32)
        for _, box in grid:
            out[box.slices] = lookup[np.asarray(out[box.slices]).astype(np.int64)]
    return BoundarySeparation(instances, unassigned)


def _grown(table: Instances, added: list[tuple[np.ndarray, Any]]) -> tuple[Instances, np.ndarray]:
    """``table`` with the pixels of ``added`` (instance ids, their measures) merged in, reordered by first pixel."""
    voxels, first = table.voxels.copy(), table.first.copy()
    coord_sum = table.centroid * table.voxels[:, None]
    lo, hi = table.bbox_start.copy(), table.bbox_stop - 1
    sums = {k: v.copy() for k, v in table.sums.items()}
    maxima = {k: v.copy() for k, v in table.maxima.items()}
    for ids, p in added:
        rows = ids - 1
        voxels[rows] += p.voxels
        coord_sum[rows] += p.coord_sum
        first[rows] = np.minimum(first[rows], p.first)
        lo[rows] = np.minimum(lo[rows], p.lo)
        hi[rows] = np.maximum(hi[rows], p.hi)
        for k in sums:
            sums[k][rows] += p.sums[k]
            with np.errstate(invalid="ignore"):
                maxima[k][rows] = np.maximum(maxima[k][rows], p.maxima[k])  # propagates NaN
    order = np.argsort(first, kind="stable")
    return Instances(class_id=table.class_id[order], voxels=voxels[order], first=first[order],
                     centroid=(coord_sum / np.maximum(voxels, 1)[:, None])[order], bbox_start=lo[order],
                     bbox_stop=hi[order] + 1, sums={k: v[order] for k, v in sums.items()},
                     maxima={k: v[order] for k, v in maxima.items()}), order
