"""Polygons from a run's mask: one valid polygon per object, never two halves at a seam, streamed.

Objects are the connected components (face connectivity, as ``scipy.ndimage.label``) of the
model's classes except class 0 (background): for "thing" classes the instances of
:mod:`segflow.instances` (ids 1..M, the ids of ``instances.csv`` and the store's ``instances``
array), for "stuff" classes merged regions of one class (ids M+1.., the store's ``regions``
array holds ``id - M``). Both are labelled chunk by chunk with ids global across seams.

Polygons are traced per chunk with ``rasterio.features.shapes`` (4-connected, so one polygon
per component and holes kept) in *global pixel coordinates* (integers: pieces of one object
from different chunks share their seam edges exactly), in raster order of the chunks. An
object inside one chunk is finished there; an object that crosses seams is held as pieces until
the last chunk of its bounding box (in raster order) is traced, then its pieces are unioned into
one polygon. Only objects crossing the current line of chunks are held, so memory is bounded by
a chunk and that line, not by the scene or the number of objects. Each finished polygon is
mapped through the scene's affine transform, optionally simplified (topology-preserving, in map
units), oriented (exterior counter-clockwise), checked valid, measured and batched into
:class:`~segflow.features.FeatureBatch`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio.features
import shapely
from affine import Affine

from .errors import ConfigError, OutputError
from .features import FeatureBatch
from .instances import Instances, Reader, label_instances
from .io.mask_store import MaskStore
from .tiling import Box, ChunkGrid

__all__ = ["ObjectTable", "VectorOptions", "label_objects", "vectorize"]

BATCH = 4096  # features per batch


@dataclass(frozen=True)
class VectorOptions:
    """``min_area``: objects smaller than this (map units², by their pixels) are not written.
    ``simplify``: tolerance in map units of a topology-preserving simplification (0: none)."""

    min_area: float = 0.0
    simplify: float = 0.0

    def check(self) -> None:
        for name in ("min_area", "simplify"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a number >= 0 in map units, got {value}")


@dataclass(frozen=True)
class ObjectTable:
    """Every object of the mask (row ``i`` = object id ``i + 1``): things first, then stuff regions."""

    class_id: np.ndarray
    pixels: np.ndarray
    bbox_start: np.ndarray  # (n, 2) row, col
    bbox_stop: np.ndarray
    score_sum: np.ndarray | None  # sum of the object's own class score, None without scores
    things: int  # objects 1..things are instances of thing classes

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    @classmethod
    def concat(cls, things: Instances, stuff: Instances, with_scores: bool) -> ObjectTable:
        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(things, name), getattr(stuff, name)])

        score = np.concatenate([things.sums["score"], stuff.sums["score"]]) if with_scores else None
        return cls(cat("class_id"), cat("voxels"), cat("bbox_start"), cat("bbox_stop"), score, len(things))


def _score_reader(store: MaskStore) -> Reader:
    scores = store.scores
    assert scores is not None
    top = int(scores.shape[0]) - 1

    def read(box: Box) -> np.ndarray:
        labels = np.minimum(store.read_labels(box), top).astype(np.intp)  # nodata: in no object
        return np.take_along_axis(np.asarray(scores[(slice(None), *box.slices)], dtype=np.float64),
                                  labels[None], axis=0)[0]

    return read


def label_objects(store: MaskStore, kinds: Sequence[str], chunk: Sequence[int]) -> ObjectTable:
    """Label things into the store's ``instances`` array and stuff regions into ``regions``."""
    things = [i for i, k in enumerate(kinds) if k == "thing" and i > 0]
    stuff = [i for i, k in enumerate(kinds) if k != "thing" and i > 0]
    names = ["y", "x"]
    values = {"score": _score_reader(store)} if store.scores is not None else None
    tables = []
    for name, classes in (("instances", things), ("regions", stuff)):
        out = store.group.create_array(name, shape=store.shape, dtype="uint32", chunks=tuple(chunk), fill_value=0,
                                       dimension_names=names, overwrite=True)
        tables.append(label_instances(store.labels, out, chunk, classes, values=values))
    return ObjectTable.concat(tables[0], tables[1], values is not None)


def _to_map(geometry: shapely.Geometry, transform: Affine) -> shapely.Geometry:
    a, b, c, d, e, f = transform[:6]
    matrix = np.array([[a, d], [b, e]])
    return shapely.transform(geometry, lambda xy: xy @ matrix + np.array([c, f]))


def _finish(pieces: list[shapely.Polygon]) -> shapely.Polygon:
    polygon = pieces[0] if len(pieces) == 1 else shapely.union_all(pieces)
    if isinstance(polygon, shapely.Polygon) and polygon.is_valid:
        return polygon
    fixed = shapely.make_valid(polygon)
    parts = [g for g in shapely.get_parts(fixed) if isinstance(g, shapely.Polygon) and not g.is_empty]
    if len(parts) != 1:
        raise OutputError(f"an object traced into {len(parts)} polygons instead of one; this is a bug, please "
                          "report it with the scene")
    return parts[0]


def _canonical(polygon: shapely.Polygon) -> shapely.Polygon:
    """One vertex list per shape, whatever the chunking: no collinear vertices (seams leave some), rings
    starting at their lowest vertex (so every later step computes the same floating-point numbers)."""
    return shapely.normalize(shapely.simplify(polygon, 0.0, preserve_topology=True))


def _polygons(store: MaskStore, table: ObjectTable, chunk: Sequence[int]) -> Iterator[tuple[int, shapely.Polygon]]:
    """``(object index, polygon in global pixel coordinates)`` for every object, each exactly once."""
    grid = ChunkGrid.create(store.shape, chunk)
    last_row = (table.bbox_stop[:, 0] - 1) // grid.chunk[0]
    last_col = (table.bbox_stop[:, 1] - 1) // grid.chunk[1]
    single = (table.bbox_start[:, 0] // grid.chunk[0] == last_row) & \
        (table.bbox_start[:, 1] // grid.chunk[1] == last_col)
    finish_at: dict[tuple[int, int], list[int]] = defaultdict(list)
    for n in np.flatnonzero(~single).tolist():
        finish_at[(int(last_row[n]), int(last_col[n]))].append(n)
    pending: dict[int, list[shapely.Polygon]] = defaultdict(list)
    instances: Any = store.group["instances"]
    regions: Any = store.group["regions"]
    if len(table) >= np.iinfo(np.int32).max:
        raise OutputError(f"{len(table)} objects: more than vector tracing can number (2^31 - 1); use a coarser model")
    for index, box in grid:
        ids = np.asarray(instances[box.slices]).astype(np.int32)
        stuff = np.asarray(regions[box.slices])
        ids[stuff > 0] = stuff[stuff > 0].astype(np.int32) + table.things
        origin = Affine.translation(box.start[1], box.start[0])
        for shape, value in rasterio.features.shapes(ids, mask=ids > 0, connectivity=4, transform=origin):
            rings = shape["coordinates"]
            polygon = shapely.Polygon(rings[0], rings[1:])
            k = int(value) - 1
            if single[k]:
                yield k, _canonical(polygon if polygon.is_valid else _finish([polygon]))
            else:
                pending[k].append(polygon)
        for k in finish_at.pop((index[0], index[1]), []):
            yield k, _canonical(_finish(pending.pop(k)))
    if pending or finish_at:
        raise OutputError(f"{len(pending)} objects were left unfinished by vector tracing; this is a bug")


def vectorize(store: MaskStore, table: ObjectTable, chunk: Sequence[int], transform: Affine,
              class_names: Sequence[str], options: VectorOptions, *, scene_id: str, model: str, model_version: str,
              run_id: str) -> Iterator[FeatureBatch]:
    """Batches of features for every object of ``table`` (see :func:`label_objects`) that passes ``options``."""
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
    keep = table.pixels * pixel_area >= options.min_area
    batch = FeatureBatch()
    for i, polygon in _polygons(store, table, chunk):
        if not keep[i]:
            continue
        geometry = _to_map(polygon, transform)
        if options.simplify > 0:
            simplified = shapely.simplify(geometry, options.simplify, preserve_topology=True)
            geometry = simplified if simplified.is_valid and not simplified.is_empty else geometry
        geometry = shapely.orient_polygons(geometry)  # exterior counter-clockwise, holes clockwise
        kind = "thing" if i < table.things else "stuff"
        score = None if table.score_sum is None else float(table.score_sum[i] / table.pixels[i])
        batch.append(geometry, instance_id=i + 1, class_id=int(table.class_id[i]),
                     class_name=class_names[int(table.class_id[i])], kind=kind, area=float(geometry.area),
                     area_px=int(table.pixels[i]), perimeter=float(geometry.length), mean_score=score,
                     scene_id=scene_id, model=model, model_version=model_version, run_id=run_id)
        if len(batch) >= BATCH:
            yield batch
            batch = FeatureBatch()
    if len(batch):
        yield batch
