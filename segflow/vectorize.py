"""Polygons from a run's mask: one valid polygon per object, never two halves at a seam, streamed.

An object is a connected region (face connectivity, as ``scipy.ndimage.label``) of one class other
than class 0 (background) and the label nodata: an instance of a "thing" class, a merged region
of a "stuff" class. Its ``instance_id`` is 1 + the flat index (``row * width + col``) of its first
pixel in raster order: unique, the same for every chunking, and it locates the object.

A multi-label store (classes that may overlap: per-class ``present`` planes, :mod:`segflow.multilabel`)
is traced class by class, every class included (there is no background class): an object is a connected
region of pixels where its class is present, so objects of different classes overlap. Its
``instance_id`` is ``1 + class_id * rows * cols + row * cols + col``: unique across classes, and still
locating the object (modulo ``rows * cols``).

How (one pass over the store; memory bounded by a line of chunks and the objects crossing it):

1. Each chunk (:func:`tracing_chunk`) is traced by ``rasterio.features.shapes`` (GDAL's polygonizer,
   4-connected) over the value image (the labels, or separated instance ids): GDAL finds the
   *pieces* (connected pixels of one value) itself, one polygon each with its holes, in global
   pixel coordinates, which are integers, so pieces of one object from neighbouring chunks share
   their seam edges exactly. Per piece, from its polygon: pixels (its area), first pixel (the
   leftmost vertex of its topmost edge), class (that pixel's label), the ring edges lying on the
   chunk's four sides and (with scores) the sum of its own class's score.
2. Edges on the two sides of a seam that overlap by at least a pixel join their pieces when they
   trace the same value (union-find).
3. After each line of chunks, every object none of whose pieces touches the line's lower edge is
   finished: its pieces are unioned into one polygon. The others wait for the next line.

Each finished polygon is mapped through the scene's affine transform, optionally simplified
(topology-preserving, in map units), oriented (exterior counter-clockwise), measured and batched
into :class:`~segflow.features.FeatureBatch`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio.features
import shapely
from affine import Affine

from .errors import ConfigError, InputError, OutputError
from .features import FeatureBatch, VectorOptions
from .io.mask_store import MaskStore
from .labels import LABEL_NODATA
from .tiling import Box, ChunkGrid
from .trace_values import Values, class_values, detected_instances, instance_values, present_values, separated_values

__all__ = ["TracedObject", "VectorOptions", "trace_objects", "tracing_chunk", "vectorize"]

BATCH = 4096  # features per batch


def tracing_chunk(store: MaskStore, limit: tuple[int, int] = (2048, 4096)) -> tuple[int, ...]:
    """The chunk to trace by: the largest multiples of the store's shard (its processing chunk) up to
    ``limit`` (rows, columns), or ``limit`` where a shard is larger.

    Larger chunks mean fewer seams to join, and GDAL's polygonizer is fastest on a few million pixels
    at a time: on a 16384² mask with 75 902 objects, 2048 × 4096 took 9.6 s at a peak of 224 MiB,
    2048² 10.3 s / 191 MiB, 4096² 9.5 s / 279 MiB, 1024 × 16384 11.4 s / 288 MiB."""
    shards = store.spatial_chunk
    return tuple(min(int(c) * max(1, most // int(c)), most) for c, most in zip(shards, limit, strict=True))


@dataclass
class TracedObject:
    """One object, or one piece of it inside a chunk: its first pixel (global flat index), class, pixel
    count, own-class score sum (NaN without scores) and polygon in global pixel coordinates
    (x = column, y = row)."""

    first: int
    class_id: int
    pixels: int
    score_sum: float
    polygon: shapely.Polygon
    value: int = 0  # the traced value (a class, or an instance's value)
    number: int | None = None  # the instance id of an instance model's object (else 1 + first)


_Piece = TracedObject  # a piece has what an object has, for its part


@dataclass
class _Edges:
    """Where a chunk's pieces meet its four sides: per side, intervals ``[a, b)`` of the side's
    coordinate (rows on the left and right sides, columns on the top and bottom) with their piece."""

    left: list[tuple[int, int, int]] = field(default_factory=list)
    right: list[tuple[int, int, int]] = field(default_factory=list)
    top: list[tuple[int, int, int]] = field(default_factory=list)
    bottom: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass
class _Pieces:
    """Pieces seen so far that belong to unfinished objects, with their union-find links."""

    pieces: dict[int, _Piece] = field(default_factory=dict)
    parent: dict[int, int] = field(default_factory=dict)
    count: int = 0

    def root(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def join(self, pairs: list[tuple[int, int]]) -> None:
        for a, b in pairs:
            ra, rb = self.root(a), self.root(b)
            if ra != rb:
                self.parent[max(ra, rb)] = min(ra, rb)


def _side(ring: np.ndarray, axis: int, at: int) -> list[tuple[int, int]]:
    """Intervals of the other coordinate covered by the ring's edges lying on the line ``coord[axis] == at``."""
    on = ring[:, axis] == at
    both = np.flatnonzero(on[:-1] & on[1:])
    other = ring[:, 1 - axis]
    return [(int(min(other[i], other[i + 1])), int(max(other[i], other[i + 1]))) for i in both.tolist()]


def _chunk_pieces(labels: np.ndarray, values: np.ndarray, scores: np.ndarray | None, box: Box, width: int,
                  start: int) -> tuple[list[_Piece], _Edges, list[int]]:
    """The pieces of one chunk (connected pixels of one class), numbered from ``start``, and its sides.

    Everything comes from the traced polygons (GDAL's polygonizer finds the pieces itself): the
    pixel count is the polygon's area in pixels (exact), the first pixel in raster order is the
    leftmost vertex of the topmost ring edge, and the sides are the ring edges lying on them.
    """
    (y0, x0), (y1, x1) = box.start, box.stop
    origin = Affine.translation(x0, y0)
    rings: list[list[tuple[float, float]]] = []
    owners: list[int] = []
    traced: list[int] = []
    for shape, value in rasterio.features.shapes(values, mask=values > 0, connectivity=4, transform=origin):
        rings.extend(shape["coordinates"])  # the shell, then the holes
        owners.extend([len(traced)] * len(shape["coordinates"]))
        traced.append(int(value))
    edges = _Edges()
    if not traced:
        return [], edges, []
    # built in bulk: two shapely calls for the chunk instead of one Polygon (and its rings) per piece
    lengths = [len(ring) for ring in rings]
    points = np.array([point for ring in rings for point in ring], dtype=np.float64)
    linear = shapely.linearrings(points, indices=np.repeat(np.arange(len(rings)), lengths))
    polygons = shapely.polygons(linear, indices=np.asarray(owners))
    areas = np.rint(shapely.area(polygons)).astype(np.int64)
    coords, owner = shapely.get_coordinates(shapely.get_exterior_ring(polygons), return_index=True)
    order = np.lexsort((coords[:, 0], coords[:, 1], owner))  # per piece: topmost row, then leftmost
    head = order[np.flatnonzero(np.diff(owner[order], prepend=-1))]
    rows, cols = coords[head, 1].astype(np.int64), coords[head, 0].astype(np.int64)
    firsts = (rows * width + cols).tolist()
    classes = labels[rows - y0, cols - x0].tolist()  # a piece's class: its first pixel's label
    bounds = shapely.bounds(polygons)
    touching = np.flatnonzero((bounds[:, 0] == x0) | (bounds[:, 2] == x1) | (bounds[:, 1] == y0) |
                              (bounds[:, 3] == y1))
    for n in touching.tolist():
        ring = coords[owner == n]
        number = start + n
        for side, axis, at, reaches in (("left", 0, x0, bounds[n, 0] == x0), ("right", 0, x1, bounds[n, 2] == x1),
                                        ("top", 1, y0, bounds[n, 1] == y0), ("bottom", 1, y1, bounds[n, 3] == y1)):
            if reaches:
                getattr(edges, side).extend((a, b, number) for a, b in _side(ring, axis, at))
    pieces = [_Piece(first, int(c), int(area), math.nan, polygon, v) for first, c, polygon, area, v
              in zip(firsts, classes, polygons.tolist(), areas.tolist(), traced, strict=True)]
    if scores is not None and pieces:
        ids = rasterio.features.rasterize(((p.polygon, n + 1) for n, p in enumerate(pieces)), out_shape=labels.shape,
                                          transform=origin, dtype="int32")
        own = np.take_along_axis(scores, np.minimum(labels, scores.shape[0] - 1)[None].astype(np.intp), axis=0)[0]
        sums = np.bincount(ids.ravel(), weights=own.ravel().astype(np.float64), minlength=len(pieces) + 1)
        for n, piece in enumerate(pieces):
            piece.score_sum = float(sums[n + 1])
    return pieces, edges, traced


def _seam_pairs(before: list[tuple[int, int, int]], after: list[tuple[int, int, int]], value_of: dict[int, int]
                ) -> list[tuple[int, int]]:
    """Pieces joined across a seam: intervals of one side of it overlapping intervals of the other by at
    least one pixel, pieces of one traced value (a class, or one separated instance)."""
    if not before or not after:
        return []
    pairs = []
    after_sorted = sorted(after)
    starts = [a for a, _, _ in after_sorted]
    for a, b, piece in before:
        k = max(0, bisect.bisect_right(starts, a) - 1)
        while k < len(after_sorted) and after_sorted[k][0] < b:
            c, d, other = after_sorted[k]
            if min(b, d) > max(a, c) and value_of[piece] == value_of[other]:
                pairs.append((piece, other))
            k += 1
    return pairs


def _finish(pieces: list[_Piece]) -> TracedObject:
    """An object from its pieces (the polygon checked and made canonical later, in bulk: :func:`_valid`)."""
    if len(pieces) == 1:
        return pieces[0]
    # a union leaves collinear vertices along the seams (GDAL's polygonizer leaves none): removed
    # (a coverage union needs the shared edges noded alike: segmentizing them first cost 3x more, measured)
    polygon = shapely.simplify(shapely.union_all([p.polygon for p in pieces]), 0.0, preserve_topology=True)
    return TracedObject(min(p.first for p in pieces), pieces[0].class_id, sum(p.pixels for p in pieces),
                        sum(p.score_sum for p in pieces), polygon, pieces[0].value)


def _valid(polygons: np.ndarray) -> np.ndarray:
    """Valid polygons in canonical form (rings from their lowest vertex: the same vertex list, hence the same
    floating-point results later, whatever the chunking). A traced ring that touches itself at a corner
    (pixels meeting diagonally inside an object) is invalid as traced; ``make_valid`` turns it into one
    valid polygon (a hole touching the shell at a point)."""
    for n in np.flatnonzero(~shapely.is_valid(polygons)).tolist():
        parts = [g for g in shapely.get_parts(shapely.make_valid(polygons[n]))
                 if isinstance(g, shapely.Polygon) and not g.is_empty]
        if len(parts) != 1:
            raise OutputError(f"an object traced into {len(parts)} polygons instead of one; this is a bug, please "
                              "report it with the scene")
        polygons[n] = parts[0]
    return shapely.normalize(polygons)


def _plane_labels(store: MaskStore, box: Box, plane: int) -> np.ndarray:
    """Class ``plane``'s pixels of a multi-label store as labels: ``plane`` where present, else nodata."""
    return np.where(store.read_present(box, plane) == 1, plane, LABEL_NODATA).astype(np.uint8)


def trace_objects(store: MaskStore, chunk: Sequence[int], values: Values = class_values, *,
                  plane: int | None = None) -> Iterator[TracedObject]:
    """Every object of the store's 2D labels, each exactly once, as soon as it is complete.

    ``plane``: of a multi-label store, the objects of that class (its ``present`` plane; ``values``
    is then ignored).
    """
    if len(store.shape) != 2:
        raise ConfigError(f"the mask store is {len(store.shape)}-D; polygons need a 2D raster run")
    width = store.shape[1]
    grid = ChunkGrid.create(store.shape, chunk)
    scores = store.scores
    state = _Pieces()
    value_of: dict[int, int] = {}
    above: dict[int, list[tuple[int, int, int]]] = {}  # chunk column -> lower side of the chunk above
    for row in range(grid.counts[0]):
        left: list[tuple[int, int, int]] = []
        below: set[int] = set()  # pieces on this line's lower edge: their objects may go on
        for col in range(grid.counts[1]):
            box = grid.box((row, col))
            # a class plane's pieces take their own class's score: the one plane given (labels = plane there)
            classes = slice(None) if plane is None else slice(plane, plane + 1)
            score = None if scores is None else np.asarray(scores[(classes, *box.slices)], dtype=np.float32)
            labels = store.read_labels(box) if plane is None else _plane_labels(store, box, plane)
            image = values(box, labels) if plane is None else present_values(box, labels)
            pieces, edges, traced = _chunk_pieces(labels, image, score, box, width, state.count + 1)
            for k, (piece, value) in enumerate(zip(pieces, traced, strict=True), start=state.count + 1):
                state.pieces[k] = piece
                state.parent[k] = k
                value_of[k] = value
            state.count += len(pieces)
            state.join(_seam_pairs(left, edges.left, value_of))
            if row > 0:
                state.join(_seam_pairs(above[col], edges.top, value_of))
            left = edges.right
            above[col] = edges.bottom
            if row + 1 < grid.counts[0]:
                below.update(k for _, _, k in edges.bottom)
        groups: dict[int, list[int]] = {}
        for k in state.pieces:
            groups.setdefault(state.root(k), []).append(k)
        open_roots = {state.root(k) for k in below}
        for root, members in groups.items():
            if root in open_roots:
                continue
            yield _finish([state.pieces.pop(k) for k in members])
            for k in members:
                del state.parent[k], value_of[k]
        for k in list(state.parent):  # keep only the links of pieces still waiting, flattened
            state.parent[k] = state.root(k)
    if state.pieces:
        raise OutputError(f"{len(state.pieces)} pieces were left unfinished by vector tracing; this is a bug")


def _to_map(geometries: np.ndarray, transform: Affine) -> np.ndarray:
    a, b, c, d, e, f = transform[:6]
    matrix = np.array([[a, d], [b, e]])
    return shapely.transform(geometries, lambda xy: xy @ matrix + np.array([c, f]))


def _fill_holes(polygon: shapely.Polygon, limit: float) -> shapely.Polygon:
    holes = [ring for ring in polygon.interiors if shapely.Polygon(ring).area >= limit]
    return polygon if len(holes) == len(polygon.interiors) else shapely.Polygon(polygon.exterior, holes)


def _features(objects: list[TracedObject], transform: Affine, class_names: Sequence[str], kinds: Sequence[str],
              options: VectorOptions, constants: dict[str, str]) -> FeatureBatch:
    """One batch of features, its geometry handled in bulk (shapely's array functions)."""
    geometry = _to_map(_valid(np.array([o.polygon for o in objects], dtype=object)), transform)
    if options.fill_holes > 0:
        geometry = np.array([_fill_holes(g, options.fill_holes) for g in geometry], dtype=object)
    if options.simplify > 0:
        simplified = shapely.simplify(geometry, options.simplify, preserve_topology=True)
        keep = shapely.is_valid(simplified) & ~shapely.is_empty(simplified)
        geometry = np.where(keep, simplified, geometry)
    geometry = shapely.orient_polygons(geometry)  # exterior counter-clockwise, holes clockwise
    batch = FeatureBatch()
    batch.geometry = list(geometry)
    classes = [o.class_id for o in objects]
    batch.columns.update(
        instance_id=[o.first + 1 if o.number is None else o.number for o in objects], class_id=classes,
        class_name=[class_names[c] for c in classes],
        kind=[kinds[c] for c in classes], area=shapely.area(geometry).tolist(),
        area_px=[o.pixels for o in objects], perimeter=shapely.length(geometry).tolist(),
        mean_score=[None if math.isnan(o.score_sum) else o.score_sum / o.pixels for o in objects],
        **{name: [value] * len(objects) for name, value in constants.items()})
    return batch


def _objects(store: MaskStore, chunk: Sequence[int], values: Values, num_classes: int) -> Iterator[TracedObject]:
    """The objects of a single-label store; of a multi-label one, class after class, their first pixel offset
    by ``class_id * rows * cols`` so that their ids differ across classes."""
    if not store.multilabel:
        yield from trace_objects(store, chunk, values)
        return
    planes = int(store.present.shape[0])
    if planes != num_classes:
        raise InputError(f"the mask holds {planes} class planes but the model has {num_classes} classes; "
                         "vectorize with the model the run used (--model)")
    pixels = math.prod(store.shape)
    for k in range(planes):
        for obj in trace_objects(store, chunk, plane=k):
            obj.first += k * pixels
            yield obj


def vectorize(store: MaskStore, chunk: Sequence[int], transform: Affine, class_names: Sequence[str],
              kinds: Sequence[str], options: VectorOptions, *, scene_id: str, model: str, model_version: str,
              run_id: str, work: Any = None) -> Iterator[FeatureBatch]:
    """Batches of features for every object of the store that passes ``options``.

    ``work``: a writable zarr group for the arrays of ``--separate watershed`` (default: the store's).
    A multi-label store gives each class's objects in turn (module docstring).
    """
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
    constants = {"scene_id": scene_id, "model": model, "model_version": model_version, "run_id": run_id}
    values: Values = class_values
    if store.multilabel and options.separate != "none":
        raise ConfigError(f"--separate {options.separate} splits objects of one label map, but this run is "
                          "multi-label (its classes may overlap); use --separate none")
    if options.separate == "watershed":
        values = separated_values(store, chunk, kinds, options.min_distance, store.group if work is None else work)
    detected = detected_instances(store)
    if detected is not None:
        values = instance_values(detected[0], len(kinds))
    pending: list[TracedObject] = []
    for obj in _objects(store, chunk, values, len(class_names)):
        if detected is not None:  # an instance model's object: its id and its detection score
            obj.number = obj.value - len(kinds)
            obj.score_sum = float(detected[1][obj.number - 1]) * obj.pixels
        if obj.class_id >= len(class_names):
            raise InputError(f"the mask holds label {obj.class_id} but the model has {len(class_names)} classes; "
                             "vectorize with the model the run used (--model)")
        if obj.pixels * pixel_area >= options.min_area:
            pending.append(obj)
        if len(pending) >= BATCH:
            yield _features(pending, transform, class_names, kinds, options, constants)
            pending = []
    if pending:
        yield _features(pending, transform, class_names, kinds, options, constants)
