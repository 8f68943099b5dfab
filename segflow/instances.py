"""Instances: N-D connected components of the "thing" classes, with ids global across chunk seams.

Definition (what :func:`label_instances` returns, for any number of dimensions):
two voxels belong to the same instance when they are linked by a path of neighbouring voxels
of one and the same thing class; neighbours are those of
``scipy.ndimage.generate_binary_structure(ndim, connectivity)`` (``connectivity=1``: faces, scipy's
default; ``connectivity=ndim``: faces, edges and corners). Ids are unique across classes and
numbered ``1, 2, ...`` in raster (C) order of each instance's first voxel; 0 is everything else.
For a single thing class this is exactly ``scipy.ndimage.label(labels == c, structure)``; for
several it is each class's scipy labelling combined into one id space and renumbered by first
voxel. The result does not depend on the chunk shape.

How (memory bounded by one chunk, never the whole array; no state carried from one chunk to the
next except the small per-piece tables):

1. Each chunk is labelled on its own (``scipy.ndimage.label`` per thing class) and its chunk-local
   ids are written to ``out``; per piece (a component inside one chunk) it keeps its class, voxel
   count, first voxel, coordinate sums, bounding box and the sum / maximum of each value source.
   Pieces get global provisional ids ``offset[chunk] + local`` once every chunk's count is known.
2. Only the two one-voxel slabs facing each other across each seam are read back. A voxel on the
   low side touches the high side at every offset of the structure that steps +1 across the seam;
   the high slab is read one voxel wider on the other axes so that edge and corner neighbours
   (full connectivity) are compared too. Every neighbouring pair in two different chunks crosses
   at least one seam plane this way, so touching pieces of the same class are all found; they are
   unioned with ``scipy.sparse.csgraph.connected_components``.
3. Instances are ordered by first voxel, their measures merged from their pieces, and each chunk of
   ``out`` is rewritten through the piece → instance lookup table.

Why not dask-image's ``ndmeasure.label`` (read and measured: dask-image 2026.5.0, dask 2026.8.0,
a shared 2-core machine, a 256×512×512 uint8 labels zarr in 128³ chunks with one thing class of
272 blobs, ids written to a uint32 zarr with the same chunks): it finds the same partition, but
(a) it numbers instances by block, not in scipy's raster order (its relabel is
``connected_components`` over block-ordered ids, so an object starting in block (0, 1) is numbered
before one starting lower down in block (0, 0)), (b) it labels one binary image, so several thing
classes cost one full pass each, (c) it gives no per-instance measures (its ``ndmeasure``
reductions are further full passes), and (d) it was slower and larger: peak RSS 163 MiB above the
interpreter and 86 s, against 57 MiB and 11 s for this module (traced peak ~15 bytes per voxel of
one chunk). Hence our own labeller; its union step is scipy's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from .errors import ConfigError, InputError
from .tiling import Box, ChunkGrid

__all__ = ["Instances", "Reader", "label_instances", "reader_for"]

Reader = Callable[[Box], np.ndarray]
"""Reads the values of a box: an array of ``box.shape`` (spatial axes only, in array order)."""

MAX_ID = np.iinfo(np.uint32).max
_MAX_LOCAL = np.iinfo(np.int32).max  # chunk-local ids are int32 (scipy's label output)
_SLAB = 1 << 18  # voxels measured at a time


def reader_for(source: Any) -> Reader:
    """A :data:`Reader` over ``source``: a callable is used as is, an array-like (numpy, zarr, dask) is sliced."""
    if callable(source):
        return source
    return lambda box: np.asarray(source[box.slices])


@dataclass(frozen=True)
class Instances:
    """Per-instance measures; row ``i`` is instance id ``i + 1``. Coordinates are array indices, in axis order.

    ``class_id`` (M,): the label value of the instance's class. ``voxels`` (M,): its number of
    voxels (pixels in 2D). ``first`` (M,): C-order flat index of its first voxel. ``centroid``
    (M, ndim): mean voxel index. ``bbox_start`` / ``bbox_stop`` (M, ndim): half-open box holding
    it. ``sums`` / ``maxima``: per value source, the sum and maximum over its voxels (a NaN in a
    source makes that instance's sum and maximum NaN).
    """

    class_id: np.ndarray
    voxels: np.ndarray
    first: np.ndarray
    centroid: np.ndarray
    bbox_start: np.ndarray
    bbox_stop: np.ndarray
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    maxima: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.voxels.shape[0])

    @property
    def ids(self) -> np.ndarray:
        return np.arange(1, len(self) + 1, dtype=np.int64)

    def mean(self, name: str) -> np.ndarray:
        """Mean of value source ``name`` over each instance's voxels."""
        return self.sums[name] / self.voxels


@dataclass
class _Pieces:
    """Measures of the pieces of one chunk (row k = chunk-local id k + 1), or of all chunks concatenated."""

    class_id: np.ndarray  # (n,) label values
    voxels: np.ndarray  # (n,) int64
    first: np.ndarray  # (n,) int64, global C-order flat index
    coord_sum: np.ndarray  # (n, ndim) float64, global indices
    lo: np.ndarray  # (n, ndim) int64, inclusive
    hi: np.ndarray  # (n, ndim) int64, inclusive
    sums: dict[str, np.ndarray]
    maxima: dict[str, np.ndarray]

    @classmethod
    def concat(cls, parts: Sequence[_Pieces], ndim: int, names: Sequence[str]) -> _Pieces:
        def cat(arrays: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
            return np.concatenate(arrays) if arrays else empty

        e1, e2 = np.zeros(0, np.int64), np.zeros((0, ndim), np.int64)
        return cls(cat([p.class_id for p in parts], e1), cat([p.voxels for p in parts], e1),
                   cat([p.first for p in parts], e1),
                   cat([p.coord_sum for p in parts], e2.astype(np.float64)),
                   cat([p.lo for p in parts], e2), cat([p.hi for p in parts], e2),
                   {k: cat([p.sums[k] for p in parts], e1.astype(np.float64)) for k in names},
                   {k: cat([p.maxima[k] for p in parts], e1.astype(np.float64)) for k in names})


def _structure(ndim: int, connectivity: int) -> np.ndarray:
    if isinstance(connectivity, bool) or not isinstance(connectivity, int | np.integer) \
            or not 1 <= connectivity <= ndim:
        raise ConfigError(f"connectivity must be 1 (faces) to {ndim} (faces, edges and corners) for {ndim}-D labels, "
                          f"got {connectivity!r}")
    return ndimage.generate_binary_structure(ndim, int(connectivity))


def _read(reader: Reader, box: Box, what: str) -> np.ndarray:
    data = np.asarray(reader(box))
    if data.shape != box.shape:
        raise InputError(f"{what} reader returned shape {data.shape} for box {box.start}-{box.stop}, "
                         f"expected {box.shape}; the reader must return exactly the box asked for")
    return data


def _label_chunk(classes: np.ndarray, things: Sequence[int], structure: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Chunk-local instance ids (int32, 0 = none) and the class of each local id (row k = id k + 1)."""
    local = np.zeros(classes.shape, dtype=np.int32)
    scratch = local if len(things) == 1 else np.empty(classes.shape, dtype=np.int32)
    owner: list[np.ndarray] = []
    count = 0
    for c in things:
        mask = classes == c
        n = ndimage.label(mask, structure, output=scratch)
        if n:
            np.add(scratch, count, out=local, where=mask)
            owner.append(np.full(n, c, dtype=np.int64))
            count += n
    return local, (np.concatenate(owner) if owner else np.zeros(0, np.int64))


def _measure(local: np.ndarray, class_id: np.ndarray, box: Box, shape: tuple[int, ...],
             values: Mapping[str, np.ndarray]) -> _Pieces:
    """Per-piece measures of one chunk, from its chunk-local ids, in global index coordinates.

    The chunk is measured by slabs of about :data:`_SLAB` voxels along its first axis (every
    measure is a sum, a minimum or a maximum), so the temporaries stay small.
    """
    n, ndim = len(class_id), len(shape)
    voxels = np.zeros(n, np.int64)
    first = np.full(n, np.iinfo(np.int64).max, np.int64)
    coord_sum = np.zeros((n, ndim), np.float64)
    lo = np.full((n, ndim), np.iinfo(np.int64).max, np.int64)
    hi = np.full((n, ndim), -1, np.int64)
    sums = {name: np.zeros(n) for name in values}
    maxima = {name: np.full(n, -np.inf) for name in values}
    rows = max(1, _SLAB // max(1, math.prod(box.shape[1:])))
    for r0 in range(0, box.shape[0], rows):
        part = Box((box.start[0] + r0, *box.start[1:]), (min(box.start[0] + r0 + rows, box.stop[0]), *box.stop[1:]))
        _measure_slab(local[r0:r0 + rows], part, shape, {k: v[r0:r0 + rows] for k, v in values.items()},
                      voxels, first, coord_sum, lo, hi, sums, maxima)
    return _Pieces(class_id, voxels, first, coord_sum, lo, hi, sums, maxima)


def _measure_slab(local: np.ndarray, box: Box, shape: tuple[int, ...], values: Mapping[str, np.ndarray],
                  voxels: np.ndarray, first: np.ndarray, coord_sum: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                  sums: dict[str, np.ndarray], maxima: dict[str, np.ndarray]) -> None:
    """Add the voxels of ``local`` (the ids over ``box``) to the per-piece tables, in place."""
    n = len(voxels)
    flat = local.ravel()
    nz = np.flatnonzero(flat)
    if not len(nz):
        return
    ids = flat[nz]
    ids -= 1
    count = np.bincount(ids, minlength=n)
    voxels += count
    strides = [math.prod(box.shape[a + 1:]) for a in range(len(shape))]
    seen = np.full(n, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(seen, ids, nz)  # local C-order = global C-order within the box
    where = seen < np.iinfo(np.int64).max
    coords = [(seen[where] // strides[a]) % box.shape[a] + box.start[a] for a in range(len(shape))]
    np.minimum.at(first, np.flatnonzero(where), np.ravel_multi_index(tuple(coords), shape))
    for a in range(len(shape)):  # one coordinate array at a time
        coord = (nz // strides[a]) % box.shape[a]
        coord_sum[:, a] += np.bincount(ids, weights=coord, minlength=n) + count * box.start[a]
        np.minimum.at(lo[:, a], ids, coord + box.start[a])
        np.maximum.at(hi[:, a], ids, coord + box.start[a])
        del coord
    for name, data in values.items():
        picked = data.ravel()[nz].astype(np.float64)
        sums[name] += np.bincount(ids, weights=picked, minlength=n)
        with np.errstate(invalid="ignore"):
            np.maximum.at(maxima[name], ids, picked)  # propagates NaN


def _provisional(out: Any, grid: ChunkGrid, offsets: np.ndarray, box: Box) -> np.ndarray:
    """Provisional (global piece) ids over ``box``, which may span several chunks: int64, 0 = none."""
    ids = np.zeros(box.shape, dtype=np.int64)
    for index in grid.indices_touching(box):
        part = grid.box(index).intersect(box)
        if part is None:
            continue
        local = np.asarray(out[part.slices]).astype(np.int64)
        offset = offsets[int(np.ravel_multi_index(index, grid.counts))]
        ids[part.relative_to(box)] = np.where(local > 0, local + offset, 0)
    return ids


def _seam_pairs(out: Any, grid: ChunkGrid, offsets: np.ndarray, class_of: np.ndarray,
                structure: np.ndarray) -> np.ndarray:
    """(2, P) pairs of provisional ids of the same class that touch across a chunk seam."""
    ndim, shape = len(grid.shape), grid.shape
    wide = int(structure.sum() > 2 * ndim + 1)  # edges or corners are neighbours: widen the high slab
    centre = np.ones(ndim, dtype=int)
    found: list[np.ndarray] = [np.zeros((2, 0), np.int64)]
    for _, box in grid:
        for a in range(ndim):
            seam = box.stop[a]
            if seam >= shape[a]:
                continue
            low = Box(tuple(seam - 1 if b == a else box.start[b] for b in range(ndim)),
                      tuple(seam if b == a else box.stop[b] for b in range(ndim)))
            high = Box(tuple(seam if b == a else max(box.start[b] - wide, 0) for b in range(ndim)),
                       tuple(seam + 1 if b == a else min(box.stop[b] + wide, shape[b]) for b in range(ndim)))
            ids_low = _provisional(out, grid, offsets, low)
            if not ids_low.any():
                continue
            ids_high = _provisional(out, grid, offsets, high)
            for step in np.argwhere(structure) - centre:
                if step[a] != 1:
                    continue
                sl_low, sl_high = [], []
                for b in range(ndim):
                    if b == a:
                        sl_low.append(slice(0, 1))
                        sl_high.append(slice(0, 1))
                        continue
                    # low voxel x (global low.start[b] + x) touches high voxel at global + step[b]
                    shift = low.start[b] + step[b] - high.start[b]
                    x0, x1 = max(0, -shift), min(low.shape[b], high.shape[b] - shift)
                    sl_low.append(slice(x0, max(x0, x1)))
                    sl_high.append(slice(x0 + shift, max(x0, x1) + shift))
                p, q = ids_low[tuple(sl_low)].ravel(), ids_high[tuple(sl_high)].ravel()
                keep = (p > 0) & (q > 0)
                p, q = p[keep], q[keep]
                keep = class_of[p] == class_of[q]
                if keep.any():
                    found.append(np.unique(np.stack([p[keep], q[keep]]), axis=1))
    pairs = np.concatenate(found, axis=1)
    return np.unique(pairs, axis=1) if pairs.shape[1] else pairs


def _merge(pieces: _Pieces, pairs: np.ndarray) -> tuple[np.ndarray, Instances]:
    """The piece → instance lookup (index = provisional id, 0 → 0) and the merged per-instance measures."""
    n = len(pieces.voxels)
    graph = sparse.coo_array((np.ones(pairs.shape[1], np.int8), (pairs[0], pairs[1])), shape=(n + 1, n + 1))
    _, component = csgraph.connected_components(graph, directed=False)
    _, component = np.unique(component[1:], return_inverse=True)  # node 0 (no piece) is never linked
    component = component.astype(np.int64)
    count = int(component.max()) + 1 if n else 0
    first = np.full(count, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, component, pieces.first)
    order = np.argsort(first, kind="stable")
    if len(order) > MAX_ID:
        raise InputError(f"{len(order)} instances do not fit uint32 ids (at most {MAX_ID}); "
                         "label a smaller region or fewer thing classes")
    rank = np.empty(count, np.int64)
    rank[order] = np.arange(count)
    row = rank[component]  # instance row of each piece
    lookup = np.zeros(n + 1, np.uint32)
    lookup[1:] = row + 1

    def add(values: np.ndarray) -> np.ndarray:
        total = np.zeros((count, *values.shape[1:]), dtype=np.result_type(values, np.int64))
        np.add.at(total, row, values)
        return total

    def extreme(values: np.ndarray, ufunc: np.ufunc, init: float) -> np.ndarray:
        result = np.full((count, *values.shape[1:]), init, dtype=values.dtype)
        ufunc.at(result, row, values)
        return result

    voxels = add(pieces.voxels)
    class_id = np.zeros(count, np.int64)
    class_id[row] = pieces.class_id
    instances = Instances(
        class_id=class_id, voxels=voxels, first=first[order],
        centroid=add(pieces.coord_sum) / np.maximum(voxels, 1)[:, None],
        bbox_start=extreme(pieces.lo, np.minimum, np.iinfo(np.int64).max),
        bbox_stop=extreme(pieces.hi, np.maximum, -1) + 1,
        sums={k: add(v) for k, v in pieces.sums.items()},
        maxima={k: extreme(v, np.fmax, -np.inf) for k, v in pieces.maxima.items()},
    )
    for k, s in instances.sums.items():  # fmax skips NaN; a NaN anywhere in an instance makes its max NaN
        instances.maxima[k][np.isnan(s)] = np.nan
    return lookup, instances


def label_instances(labels: Any, out: Any, chunk: int | Sequence[int], things: Sequence[int], *,
                    connectivity: int = 1, values: Mapping[str, Any] | None = None) -> Instances:
    """Label the instances of the ``things`` classes of ``labels`` chunk by chunk into ``out``.

    ``labels``: the class map, an array-like or a :data:`Reader` (spatial axes only, any number of
    dimensions). ``out``: a writable array of the same shape (a zarr ``uint32`` array for big data;
    numpy works too) that receives the instance ids (0 = no instance). ``chunk``: the processing
    chunk (one int for every axis, or one per axis); memory is bounded by it. ``connectivity``: 1
    (faces, scipy's default) to ``ndim`` (full). ``values``: named value sources (array-likes or
    readers over the same grid, e.g. an input intensity, a class score) whose sum and maximum are
    kept per instance. Returns the per-instance measures; see the module docstring for the ids.
    """
    shape = tuple(int(s) for s in out.shape)
    if not shape:
        raise ConfigError("labels must have at least one spatial axis")
    if hasattr(labels, "shape") and tuple(labels.shape) != shape:
        raise ConfigError(f"labels are {tuple(labels.shape)} but out is {shape}; give an output of the labels' shape")
    if not np.can_cast(np.uint32, np.dtype(out.dtype)):
        raise ConfigError(f"out has dtype {out.dtype}, which cannot hold uint32 instance ids; create it as uint32")
    structure = _structure(len(shape), connectivity)
    grid = ChunkGrid.create(shape, chunk)
    if math.prod(grid.chunk) > _MAX_LOCAL:
        raise ConfigError(f"chunk {grid.chunk} holds more than {_MAX_LOCAL} voxels; choose a smaller chunk")
    read = reader_for(labels)
    sources = {name: reader_for(src) for name, src in (values or {}).items()}
    thing_ids = sorted({int(t) for t in things})

    parts: list[_Pieces] = []  # pass 1: each chunk alone
    sizes: list[int] = []  # pieces per chunk, in grid order
    for _, box in grid:
        local, owner = _label_chunk(_read(read, box, "labels"), thing_ids, structure)
        out[box.slices] = local.view(np.uint32)  # ids are >= 0
        sizes.append(len(owner))
        if len(owner):
            data = {name: _read(r, box, f"value source {name!r}") for name, r in sources.items()}
            parts.append(_measure(local, owner, box, shape, data))
            del data
        del local
    counts = np.array(sizes, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pieces = _Pieces.concat(parts, len(shape), list(sources))
    del parts
    class_of = np.concatenate([[-1], pieces.class_id])  # index = provisional id

    pairs = _seam_pairs(out, grid, offsets, class_of, structure)  # pass 2: the seams
    lookup, instances = _merge(pieces, pairs)

    for i, (_, box) in enumerate(grid):  # pass 3: global ids
        if counts[i] == 0:
            continue
        table = lookup[offsets[i]:offsets[i] + counts[i] + 1].copy()
        table[0] = 0
        out[box.slices] = table[np.asarray(out[box.slices])]
    return instances

