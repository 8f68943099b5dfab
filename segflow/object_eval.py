"""Object precision, recall and F1 of a raster prediction against a truth vector file.

``segflow eval --pred out/ --truth truth.gpkg`` (:func:`evaluate_objects`).

Objects
    *Truth*: one per feature of the truth file (Polygon or MultiPolygon; GeoPackage, FlatGeobuf,
    GeoJSON, Shapefile... through GDAL/pyogrio, GeoParquet through pyarrow), its class from the
    ``class_name``, ``class`` or ``class_id`` column (names are those of the prediction), or one
    class for every feature (``truth_class``). *Prediction*: the connected components (face
    connectivity) of each scored class of the prediction's labels, which are exactly the objects
    ``--vectorize`` writes (thing instances and stuff regions alike); of a run folder whose run had
    ``--min-area``, only those the run kept. Scored classes are the classes the truth holds (a truth
    of buildings says nothing about predicted water); class 0 is background, never an object.

Everything is counted on the prediction's pixel grid (exact on the grid, memory bounded): the truth
polygons are read, checked, reprojected into the prediction's CRS and mapped to its pixel
coordinates once, then rasterized block by block (:mod:`segflow.io.vector_truth`: a pixel belongs
to a polygon when its centre lies inside, GDAL's rule). Prediction objects are labelled chunk by
chunk (:func:`segflow.instances.label_instances`, into a temporary zarr store under ``TMPDIR``). For
every block the pixels covered by both a prediction object ``p`` and a truth object ``t`` are
counted per pair ``(p, t)`` and summed over blocks. ``IoU = |p ∩ t| / (|p| + |t| - |p ∩ t|)`` in
pixels; for polygons with vertices on pixel corners (segflow's unsimplified polygons) this is
shapely's polygon IoU. A pixel inside several truth polygons belongs to each of them (the report
says how many such pixels there are). Truth features covering no pixel centre of the grid (outside
it, empty, or smaller than a pixel) are left out and counted in the report; truth objects crossing
the grid's edge are scored on their part inside it. Prediction pixels that are nodata (255) belong
to no object, so truth there is missed.

Memory: the truth features (geometry and class, about 0.5 KiB per simple polygon), per-object and
per-overlapping-pair tables, and about 100 bytes per pixel of one ``block x block`` block; never
the scene. Measured (2 CPU cores): 102 400 objects on a 3200 x 3200 grid against 102 400 truth
squares, 6 s and 180 MiB above the interpreter with the default block of 1024 (9 s, 430 MiB with 2048).

Besides the object scores, each scored class gets its pixel IoU: predicted pixels of the class
against pixels inside the truth polygons of the class.

Against a truth *label raster* (``segflow eval --truth truth.tif``), :func:`raster_object_scores`
scores the thing classes the same way: both rasters' objects labelled chunk by chunk with global ids,
pair intersections summed over blocks and matched by :mod:`segflow._object_match`, which both paths share.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from ._label_raster import LabelRaster, open_labels
from ._object_match import PairCounts, match_pairs
from .errors import ConfigError, InputError
from .georef import PixelGrid
from .instances import label_instances
from .io.atomic import atomic_write_text
from .io.vector_truth import TruthPolygons, members, read_truth
from .labels import LABEL_NODATA
from .metrics import ObjectScore
from .tiling import Box, ChunkGrid

__all__ = ["VECTOR_SUFFIXES", "Matches", "ObjectClassScore", "ObjectEvalReport", "evaluate_objects",
           "is_vector_file", "raster_object_scores"]

VECTOR_SUFFIXES = (".gpkg", ".fgb", ".geojson", ".json", ".shp", ".parquet", ".geoparquet", ".gml", ".kml",
                   ".sqlite")


def is_vector_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a vector file (by its suffix, one of :data:`VECTOR_SUFFIXES`)."""
    return Path(path).suffix.lower() in VECTOR_SUFFIXES


# --------------------------------------------------------------------------- counting and matching


@dataclass
class _Counts(PairCounts):
    """Pair intersections (:class:`~segflow._object_match.PairCounts`) and per-class pixel counts, summed
    block by block."""

    truth_area: np.ndarray = field(init=False)
    pixels: np.ndarray = field(default_factory=lambda: np.zeros((3, 256), np.int64))  # pred, truth, both per class
    shared: int = 0

    def __post_init__(self) -> None:
        self.truth_area = np.zeros(self.n_truth + 1, np.int64)


def _count_block(counts: _Counts, labels: np.ndarray, pred_ids: np.ndarray, truth: TruthPolygons, box: Box) -> None:
    index, owner, shared = members(truth, box)
    counts.shared += shared
    counts.truth_area += np.bincount(owner, minlength=counts.n_truth + 1)
    pid = pred_ids.ravel()[index]
    both = pid > 0
    counts.add_pairs(pid[both].astype(np.int64) * (counts.n_truth + 1) + owner[both])
    flat = labels.ravel()
    counts.pixels[0] += np.bincount(flat[flat != LABEL_NODATA], minlength=256)
    cls = truth.class_id.astype(np.uint8)[owner - 1] if owner.size else np.zeros(0, np.uint8)
    if shared:  # one count per (pixel, class)
        code = np.unique(index * 256 + cls)
        index, cls = code // 256, code % 256
    counts.pixels[1] += np.bincount(cls, minlength=256)
    counts.pixels[2] += np.bincount(cls[flat[index] == cls], minlength=256)


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class ObjectClassScore:
    """Object scores of one class (``name`` ``"all"``: summed over the scored classes, micro).

    ``truth`` / ``pred``: objects; ``tp`` matched pairs, ``fp = pred - tp``, ``fn = truth - tp``;
    precision, recall, F1 as :class:`~segflow.metrics.ObjectScore` (NaN where undefined);
    ``match_iou``: mean IoU of the matched pairs; ``pixel_iou``: pixels of the class predicted vs
    inside its truth polygons (NaN for ``"all"``).
    """

    name: str
    truth: int
    pred: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    match_iou: float
    pixel_iou: float

    def as_dict(self) -> dict[str, Any]:
        return {"class": self.name, "truth_objects": self.truth, "pred_objects": self.pred, "tp": self.tp,
                "fp": self.fp, "fn": self.fn, "precision": self.precision, "recall": self.recall, "f1": self.f1,
                "match_iou": self.match_iou, "pixel_iou": self.pixel_iou}


@dataclass(frozen=True)
class Matches:
    """The matched pairs, each array (m,): ``pred_id`` the prediction object's ``1 + row * width + col``
    of its first pixel in raster order (the ``instance_id`` of the object in the run's vector file),
    ``truth_row`` the truth feature's 0-based row in file order, ``class_id`` and ``iou``."""

    pred_id: np.ndarray
    truth_row: np.ndarray
    class_id: np.ndarray
    iou: np.ndarray


def _num(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _write_text(path: Path, text: str) -> Path:
    return atomic_write_text(path, text, hint="choose a writable location")


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


@dataclass(frozen=True)
class ObjectEvalReport:
    """Object scores per scored class and overall, with what was done (``notes``); same outputs as
    :class:`~segflow.evaluate.EvalReport`: :meth:`format_table`, :meth:`to_json`, :meth:`to_csv`."""

    rows: list[ObjectClassScore]
    overall: ObjectClassScore
    iou_threshold: float
    matching: str
    notes: list[str]
    pred: str
    truth: str
    matches: Matches = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"prediction": self.pred, "truth": self.truth, "iou_threshold": self.iou_threshold,
                "matching": self.matching, "notes": self.notes,
                "classes": [{k: _num(v) for k, v in r.as_dict().items()} for r in self.rows],
                "overall": {k: _num(v) for k, v in self.overall.as_dict().items()}}

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON (NaN as null); returns the path."""
        return _write_text(Path(path), json.dumps(self.as_dict(), indent=2) + "\n")

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """One row per class, then ``all`` (NaN as empty)."""
        import csv
        from io import StringIO

        keys = list(self.overall.as_dict())
        buffer = StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(keys)
        for r in [*self.rows, self.overall]:
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in r.as_dict().values()])
        return _write_text(Path(path), buffer.getvalue())

    def format_table(self) -> str:
        """An aligned text table, one line per class and ``all``, then the notes."""
        header = ["class", "truth", "pred", "TP", "FP", "FN", "precision", "recall", "F1", "match IoU", "pixel IoU"]
        body = [[r.name, *(str(v) for v in (r.truth, r.pred, r.tp, r.fp, r.fn)),
                 *(_fmt(v) for v in (r.precision, r.recall, r.f1, r.match_iou, r.pixel_iou))]
                for r in [*self.rows, self.overall]]
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

        def line(cells: Sequence[str]) -> str:
            return "  ".join([cells[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells[1:], widths[1:],
                                                                                      strict=True))])

        rule = "-" * len(line(header))
        out = [f"objects at IoU >= {self.iou_threshold:g} ({self.matching})", line(header), rule,
               *(line(b) for b in body[:-1]), rule, line(body[-1])]
        return "\n".join([*out, *(f"note: {n}" for n in self.notes)])


# --------------------------------------------------------------------------- evaluation


def _run_min_area(pred: Path) -> float:
    """The ``--min-area`` of the run whose folder ``pred`` is (0 when not a run folder or none was set)."""
    record = pred / "run.json"
    if not (pred.is_dir() and record.is_file()):
        return 0.0
    try:
        params = json.loads(record.read_text(encoding="utf-8"))["parameters"]
        return float((params.get("vector_options") or {}).get("min_area", 0.0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise InputError(f"{record} is unreadable; re-run tile-infer to rewrite it, or give the labels "
                         "(labels.tif) instead of the run folder") from None


def _row(name: str, truth: int, pred: int, tp: int, ious: np.ndarray, pixel_iou: float) -> ObjectClassScore:
    s = ObjectScore.from_counts(tp, pred - tp, truth - tp)
    return ObjectClassScore(name, truth, pred, tp, s.fp, s.fn, s.precision, s.recall, s.f1,
                            float(ious.mean()) if ious.size else math.nan, pixel_iou)


def evaluate_objects(pred: str | os.PathLike[str], truth: str | os.PathLike[str], *, iou: float = 0.5,
                     truth_class: str | None = None, class_names: Sequence[str] | None = None, block: int = 1024,
                     min_area: float | None = None) -> ObjectEvalReport:
    """Object precision, recall and F1 of a raster prediction against a truth vector file.

    Parameters
    ----------
    pred : str or PathLike
        A tile-infer output folder, a label GeoTIFF or a ``mask.zarr`` (rows, cols).
    truth : str or PathLike
        A vector file of (Multi)Polygons with a ``class_name``, ``class`` or ``class_id`` column;
        any CRS (reprojected to the prediction's).
    iou : float
        Match threshold in (0, 1]: a pair matches when IoU >= ``iou`` (see :func:`~segflow._object_match.greedy_pairs`).
    truth_class : str, optional
        The class of every truth feature (a name of the prediction's classes, or an id).
    class_names : sequence of str, optional
        Names by label value; default the prediction's.
    block : int
        Side in pixels of the blocks read, labelled and rasterized; bounds memory, never changes a number.
    min_area : float, optional
        Prediction objects smaller than this (map units², by their pixels) are left out; default the
        run's ``--min-area`` for a run folder, else 0.

    The module docstring says what an object is and how pixels are counted.
    """
    threshold = float(iou) if isinstance(iou, int | float) and not isinstance(iou, bool) else math.nan
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"iou={iou!r}; expected a threshold in (0, 1], e.g. --iou 0.5")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ConfigError(f"block={block!r}; expected a positive number of pixels, e.g. 1024")
    raster = open_labels(pred, "prediction")
    try:
        names = list(class_names) if class_names is not None else raster.class_names
        grid = PixelGrid(raster.shape, raster.crs, raster.transform)
        t = read_truth(Path(truth), grid, names, truth_class, grid_name=f"the prediction {raster.path}")
        area_limit = _run_min_area(Path(pred)) if min_area is None else float(min_area)
        with tempfile.TemporaryDirectory(prefix="segflow-objects-") as tmp:
            counts, objects, keep = _count(raster, t, block, area_limit, tmp)
    finally:
        raster.close()
    notes = list(t.notes)
    if area_limit > 0:
        notes.append(f"{int((~keep[1:]).sum())} prediction objects under min_area {area_limit:g} "
                     "(the run's --min-area unless given) left out")
    scored = counts.truth_area[1:] > 0
    if (~scored).any():
        notes.append(f"{int((~scored).sum())} truth features cover no pixel centre of the prediction (outside it, "
                     "empty or smaller than a pixel) and are left out")
    if counts.shared:
        notes.append(f"{counts.shared} pixels lie in more than one truth polygon (each counted in every one); "
                     "matching there is greedy")
    p, q, ious = match_pairs(counts, objects.class_id, objects.voxels, t.class_id, counts.truth_area[1:], threshold)
    matches = Matches(objects.first[p - 1] + 1, q - 1, t.class_id[q - 1], ious)
    rows = []
    kept_class = objects.class_id[keep[1:]]
    for c in np.unique(t.class_id[scored]).tolist():
        both, pred_px, truth_px = counts.pixels[2, c], counts.pixels[0, c], counts.pixels[1, c]
        name = names[c] if names and c < len(names) and names[c] else f"class_{c}"
        rows.append(_row(name, int((t.class_id[scored] == c).sum()), int((kept_class == c).sum()),
                         int((matches.class_id == c).sum()), matches.iou[matches.class_id == c],
                         float(both / (pred_px + truth_px - both))))
    overall = _row("all", sum(r.truth for r in rows), sum(r.pred for r in rows), len(p), matches.iou, math.nan)
    matching = ("unique: at IoU >= 0.5 the match count does not depend on the order" if threshold >= 0.5
                else "greedy one-to-one assignment by descending IoU")
    return ObjectEvalReport(rows, overall, threshold, matching, notes, str(raster.path), str(truth), matches)


def _count(raster: LabelRaster, truth: TruthPolygons, block: int, min_area: float, tmp: str
           ) -> tuple[_Counts, Any, np.ndarray]:
    """Label the prediction's objects of the scored classes, then count pixels block by block.

    Returns the counts, the prediction objects' measures and ``keep`` (index = object id, 0 = none).
    """
    import zarr

    grid = ChunkGrid.create(raster.shape, block)
    ids = zarr.create_array(store=str(Path(tmp) / "objects.zarr"), shape=raster.shape, dtype="uint32",
                            chunks=grid.chunk, fill_value=0)

    def read(box: Box) -> np.ndarray:
        return raster.read((box.start[0], box.stop[0]), (box.start[1], box.stop[1]))

    objects = label_instances(read, ids, grid.chunk, np.unique(truth.class_id).tolist(), connectivity=1)
    transform = raster.transform or Affine.identity()
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
    keep = np.concatenate([[False], objects.voxels * pixel_area >= min_area])
    lookup = np.where(keep, np.arange(len(keep)), 0).astype(np.uint32)
    counts = _Counts(len(truth.geometry))
    for _, box in grid:
        _count_block(counts, read(box), lookup[np.asarray(ids[box.slices])], truth, box)
    return counts, objects, keep


# --------------------------------------------------------------------------- against a truth label raster


def raster_object_scores(pred: LabelRaster, truth: LabelRaster, things: Sequence[int], names: Sequence[str], *,
                         ignore: Sequence[int] = (), block: int = 2048, iou: float = 0.5) -> list[ObjectClassScore]:
    """Object precision, recall and F1 per thing class of a label raster against a truth label raster.

    Objects are the connected components (face connectivity, as training's ``instances_from_mask``)
    of each class of ``things`` in each raster, labelled block by block with ids global across block
    seams (:func:`~segflow.instances.label_instances`, into temporary zarr stores under ``TMPDIR``):
    an object cut by a seam is one object. Only truth pixels that count are looked at: where the
    truth is nodata (255) or an ``ignore`` value, neither raster has an object (the prediction there
    is not scored, as for the pixel scores); a prediction's nodata is no object, so truth objects
    there are missed. Pairs of one class match at pixel ``IoU >= iou`` (:mod:`segflow._object_match`).
    Both rasters must share one grid (``(rows, cols)``). Memory: a few ``block x block`` arrays and
    the per-object and per-pair tables, never the scene.
    """
    import zarr

    if not things:
        return []
    grid = ChunkGrid.create(pred.shape, block)
    skip = np.asarray(sorted({LABEL_NODATA, *(int(v) for v in ignore)}))

    def masked(box: Box, which: int) -> np.ndarray:
        rows, cols = (box.start[0], box.stop[0]), (box.start[1], box.stop[1])
        t = truth.read(rows, cols)
        out = t if which else pred.read(rows, cols)
        return np.where(np.isin(t, skip), LABEL_NODATA, out)

    thing_ids = sorted({int(c) for c in things})
    with tempfile.TemporaryDirectory(prefix="segflow-objects-") as tmp:
        ids = [zarr.create_array(store=str(Path(tmp) / f"{name}.zarr"), shape=pred.shape, dtype="uint32",
                                 chunks=grid.chunk, fill_value=0) for name in ("pred", "truth")]
        found = [label_instances(lambda box, w=w: masked(box, w), ids[w], grid.chunk, thing_ids, connectivity=1)
                 for w in (0, 1)]
        counts = PairCounts(len(found[1]))
        for _, box in grid:
            counts.add_ids(np.asarray(ids[0][box.slices]), np.asarray(ids[1][box.slices]))
        p, _, ious = match_pairs(counts, found[0].class_id, found[0].voxels, found[1].class_id, found[1].voxels,
                                 iou)
    matched_class = found[0].class_id[p - 1]
    return [_row(names[c] if c < len(names) else f"class_{c}", int((found[1].class_id == c).sum()),
                 int((found[0].class_id == c).sum()), int((matched_class == c).sum()), ious[matched_class == c],
                 math.nan) for c in thing_ids]
