"""Score a predicted label raster against a truth label raster, block by block.

``evaluate`` reads both rasters in ``block x block`` windows (never whole), so memory stays
bounded for rasters larger than memory, and accumulates one
:class:`~segflow.metrics.ConfusionMatrix`. What counts:

* the **truth** decides which pixels are scored: truth pixels that are 255 (segflow's label
  nodata), the truth's declared nodata or an ``ignore`` value are left out, whatever the
  prediction says there; an ignored class leaves the means and shows as ignored, and a
  prediction of it on a scored pixel is an error (a false negative of the true class);
* a scored truth pixel where the **prediction** is nodata (255 or its declared nodata) has no
  prediction: it is a false negative of its class ("missed"), and the report's ``coverage`` is
  the fraction of scored truth pixels that have a prediction (``segflow eval`` fails below
  ``--min-coverage``, 100 % by default, after writing the report);
* object precision, recall and F1 at IoU >= 0.5 for each thing class (the run's model's
  ``kind: thing`` classes, as training reports them, or ``things``): connected regions of the
  class in each raster, whole across block seams (:func:`~segflow.object_eval.raster_object_scores`).

The prediction may be a tile-infer output directory (its ``labels.tif``), a label GeoTIFF or a
``mask.zarr`` group (its ``labels`` array; geometry from the group attributes ``crs`` and
``transform``). Both rasters must share one grid: CRS, shape ``(rows, cols)`` and affine
transform; the refusal names the command that fixes it (:func:`segflow.georef.fix_command`).
:func:`evaluate_prediction` (behind ``segflow eval``) sends a volume prediction (a 3D
``mask.zarr``, a volume run folder, a label NIfTI) to :func:`segflow.volume_eval.evaluate_volume`
(Dice, HD95 and surface Dice in mm), a vector truth to :func:`segflow.object_eval.evaluate_objects`
and a raster to :func:`evaluate`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import georef
from ._eval_report import ClassScore, EvalReport
from ._label_raster import LabelRaster, open_labels
from .errors import ConfigError, InputError, SegflowError
from .georef import PixelGrid
from .labels import LABEL_NODATA
from .metrics import ConfusionMatrix
from .object_eval import raster_object_scores
from .tiling import ChunkGrid

if TYPE_CHECKING:
    from .object_eval import ObjectEvalReport
    from .volume_eval import VolumeEvalReport

__all__ = ["ClassScore", "EvalReport", "LabelRaster", "evaluate", "evaluate_prediction", "open_labels"]

NODATA = LABEL_NODATA
_MAX_LABELS = 255  # labels are 0..254; 255 is nodata


def check_same_grid(pred: LabelRaster, truth: LabelRaster) -> None:
    """Refuse with one :class:`InputError` line naming every grid property that differs and the fix."""
    georef.check_same_grid(PixelGrid(pred.shape, pred.crs, pred.transform),
                           PixelGrid(truth.shape, truth.crs, truth.transform),
                           names=("prediction", "truth"), paths=(pred.path, truth.path), nodata=NODATA)


def check_same_classes(pred: LabelRaster, truth: LabelRaster) -> None:
    """Refuse a truth whose class names (its ``classes`` / ``class_names`` tag) put a class of the prediction at
    another label: the scores would compare different classes under one name. Names that differ only in
    spelling (``bg`` / ``background``) are not judged."""
    if not pred.class_names or not truth.class_names:
        return
    theirs = {n.strip().lower(): k for k, n in enumerate(truth.class_names)}
    for k, name in enumerate(pred.class_names):
        j = theirs.get(name.strip().lower())
        if j is not None and j != k:
            raise InputError(
                f"class {name!r} is label {k} in the prediction {pred.path} but label {j} in the truth {truth.path} "
                f"(prediction classes {', '.join(pred.class_names)}; truth classes {', '.join(truth.class_names)}); "
                "remap the truth's labels to the prediction's (e.g. gdal_calc.py), or evaluate a prediction of the "
                "model whose classes the truth uses")


# --------------------------------------------------------------------------- thing classes


def _names(k: int, explicit: Sequence[str] | None, pred: LabelRaster, truth: LabelRaster) -> list[str]:
    sources = [list(explicit) if explicit is not None else None, pred.class_names, truth.class_names]
    names = []
    for i in range(k):
        found = next((s[i] for s in sources if s is not None and i < len(s) and s[i]), f"class_{i}")
        names.append(found)
    return names


def _class_id(value: str | int, names: Sequence[str]) -> int:
    if isinstance(value, str) and value in names:
        return names.index(value)
    text = str(value).strip()
    if text.isdigit() and int(text) < _MAX_LABELS:
        return int(text)
    raise ConfigError(f"thing class {value!r} is not a class of the prediction ({', '.join(names)}); give a class "
                      "name or a label 0..254, e.g. --things building")


def _run_record(pred: Path, raster: LabelRaster) -> Path | None:
    """The ``run.json`` of the tile-infer run whose output ``pred`` is (the folder, its labels.tif or mask.zarr)."""
    if pred.is_dir() and (pred / "run.json").is_file():
        return pred / "run.json"
    record = raster.path.parent / "run.json"
    return record if raster.path.name in ("labels.tif", "mask.zarr") and record.is_file() else None


def _run_things(pred: Path, raster: LabelRaster) -> tuple[list[int], list[str]]:
    """The thing classes of the model of the run that wrote ``pred`` (``kind: thing``, as training scores them)."""
    from .models.package import resolve_package

    ask = "; name them with --things (e.g. --things building) or --things none"
    record = _run_record(pred, raster)
    if record is None:
        return [], [f"no object scores: {pred} is not a tile-infer run folder, so its thing classes are unknown{ask}"]
    try:
        model = json.loads(record.read_text(encoding="utf-8"))["model"]
        source, classes = str(model["source"]), list(model["classes"])
    except (OSError, ValueError, KeyError, TypeError):
        return [], [f"no object scores: {record} names no model{ask}"]
    try:
        spec = resolve_package(source.removeprefix("builtin:")).spec
    except (SegflowError, OSError) as exc:
        return [], [f"no object scores: the run's model {source} cannot be read ({str(exc)[:150]}){ask}"]
    if list(spec.class_names) != classes:
        return [], [f"no object scores: the model at {source} now has classes {', '.join(spec.class_names)}, the "
                    f"run's were {', '.join(classes)}{ask}"]
    things = [k for k, c in enumerate(spec.classes) if c.kind == "thing"]
    return things, [] if things else [f"no object scores: the run's model {spec.name} has no thing classes"]


def _thing_classes(things: Sequence[str | int] | None, names: Sequence[str], pred: Path, raster: LabelRaster,
                   ignored: Sequence[int]) -> tuple[list[int], list[str]]:
    found, notes = (sorted({_class_id(v, names) for v in things}), []) if things is not None else \
        _run_things(pred, raster)
    skipped = [c for c in found if c in ignored]
    if skipped:
        notes.append(f"ignored classes have no object scores: {', '.join(names[c] for c in skipped)}")
    return [c for c in found if c not in ignored], notes


# --------------------------------------------------------------------------- evaluation


def _check_ignore(ignore: Sequence[int]) -> list[int]:
    values = []
    for v in ignore:
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= v <= NODATA:
            raise ConfigError(f"ignore value {v!r} is not a label; expected an integer in 0..255, e.g. --ignore 0")
        values.append(int(v))
    return values


def evaluate(pred: str | os.PathLike[str], truth: str | os.PathLike[str], *,
             class_names: Sequence[str] | None = None, block: int = 2048, ignore: Sequence[int] = (),
             things: Sequence[str | int] | None = None, iou: float = 0.5) -> EvalReport:
    """Per-class IoU, Dice, precision, recall, support and misses, coverage, and object scores of ``pred``.

    Parameters
    ----------
    pred : str or PathLike
        A tile-infer output folder (its ``labels.tif``), a label GeoTIFF or a ``mask.zarr``.
    truth : str or PathLike
        A label raster (GeoTIFF, or a zarr store) on the same grid as ``pred``.
    class_names : sequence of str, optional
        Names by label value; default: the prediction's ``class_names`` tag / attribute, else the
        truth's ``classes`` tag, else ``class_<i>``.
    block : int
        Window side in pixels; both rasters are read ``block x block`` at a time, so memory is
        bounded by a few ``block**2`` int32 arrays. The result does not depend on it.
    ignore : sequence of int
        Truth values to leave out besides 255 / declared nodata (e.g. an "unlabelled" class).
    things : sequence of str or int, optional
        Classes (names or labels) scored as objects; default the ``kind: thing`` classes of the model
        of the run that wrote ``pred`` (from its ``run.json``), none (with a note) when unknown.
    iou : float
        Object match threshold in (0, 1]: a predicted and a true object match when ``IoU >= iou``.

    Returns
    -------
    EvalReport
        ``K = max(len(names), highest label seen + 1)`` classes. The module docstring says what counts.
    """
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ConfigError(f"block={block!r}; expected a positive number of pixels, e.g. 2048")
    if isinstance(iou, bool) or not isinstance(iou, int | float) or not 0.0 < iou <= 1.0:
        raise ConfigError(f"iou={iou!r}; expected a threshold in (0, 1], e.g. --iou 0.5")
    ignored = _check_ignore(ignore)
    cm = ConfusionMatrix(_MAX_LABELS, ignore_index=[NODATA, *ignored], no_prediction=NODATA)
    with ExitStack() as stack:
        p = open_labels(pred, "prediction", multiband=True)
        stack.callback(p.close)
        if p.multilabel:
            return _multilabel(p, truth, stack, class_names, ignored, things, Path(pred), block, iou)
        if p.bands != 1:
            raise InputError(f"{p.path} has {p.bands} bands; expected a single-band label raster (or the labels.tif "
                             "of a multi-label run)")
        t = open_labels(truth, "truth")
        stack.callback(t.close)
        check_same_grid(p, t)
        if class_names is None:
            check_same_classes(p, t)
        for _, box in ChunkGrid.create(p.shape, block):
            rows, cols = (box.start[0], box.stop[0]), (box.start[1], box.stop[1])
            cm.update(p.read(rows, cols), t.read(rows, cols))
        counts, missed = cm.matrix, cm.missed
        seen = np.flatnonzero(counts.sum(axis=0) + counts.sum(axis=1) + missed)
        named = max(len(class_names) if class_names is not None else 0, len(p.class_names or []),
                    0 if p.class_names else len(t.class_names or []))
        k = max(named, int(seen[-1]) + 1 if seen.size else 0, 1)
        names = _names(k, class_names, p, t)
        thing_ids, notes = _thing_classes(things, names, Path(pred), p, ignored)
        objects = raster_object_scores(p, t, thing_ids, names, ignore=ignored, block=block, iou=float(iou))
    iou_, dice, precision, recall, support = cm.iou(), cm.dice(), cm.precision(), cm.recall(), cm.support()
    scores = [ClassScore(name=names[i], iou=float(iou_[i]), dice=float(dice[i]), precision=float(precision[i]),
                         recall=float(recall[i]), support=int(support[i]), missed=int(missed[i]),
                         ignored=i in cm.ignored_classes) for i in range(k)]
    return EvalReport(rows=scores, mean_iou=cm.mean_iou(), pixel_accuracy=cm.pixel_accuracy(), pixels=cm.total,
                      confusion=counts[:k, :k].tolist(), pred=str(p.path), truth=str(t.path), covered=cm.covered,
                      mean_dice=cm.mean_dice(), ignored=tuple(sorted(set(ignored))), objects=objects,
                      iou_threshold=float(iou), notes=notes)


def _multilabel(p: LabelRaster, truth: str | os.PathLike[str], stack: ExitStack, class_names: Sequence[str] | None,
                ignored: Sequence[int], things: Sequence[str | int] | None, pred: Path, block: int,
                iou: float) -> EvalReport:
    """:func:`evaluate` of a multi-label prediction (:mod:`segflow.multilabel_eval`)."""
    from .multilabel_eval import evaluate_multilabel

    if ignored:
        raise ConfigError("--ignore applies to class-id truths; a multi-label truth marks what is not labelled with "
                          "255 in each class's band: leave --ignore out")
    t = open_labels(truth, "truth", multiband=True)
    stack.callback(t.close)
    check_same_grid(p, t)
    names = _names(p.bands, class_names, p, t)
    thing_ids, notes = _thing_classes(things, names, pred, p, ())
    return evaluate_multilabel(p, t, names=names, things=thing_ids, notes=notes, block=block, iou=iou)


def _check_min_coverage(min_coverage: float | None) -> None:
    if min_coverage is not None and (isinstance(min_coverage, bool) or not isinstance(min_coverage, int | float)
                                     or not 0.0 <= min_coverage <= 100.0 or math.isnan(min_coverage)):
        raise ConfigError(f"--min-coverage {min_coverage!r}; expected a percentage in 0..100, e.g. 100 (the "
                          "default: every truth pixel needs a prediction)")


def evaluate_prediction(pred: str | os.PathLike[str], truth: str | os.PathLike[str], *,
                        class_names: Sequence[str] | None = None, block: int | None = None,
                        ignore: Sequence[int] = (), tolerance: float | None = None, halo: float | None = None,
                        iou: float | None = None, truth_class: str | None = None,
                        things: Sequence[str | int] | None = None, min_coverage: float | None = None
                        ) -> EvalReport | VolumeEvalReport | ObjectEvalReport:
    """Score ``pred`` against ``truth``: a volume prediction (3D) by
    :func:`~segflow.volume_eval.evaluate_volume` (``block`` = chunk side in voxels, default 128;
    ``tolerance``/``halo`` in mm), a raster against a truth vector file (by suffix, see
    :func:`~segflow.object_eval.is_vector_file`) by :func:`~segflow.object_eval.evaluate_objects`
    (``iou`` threshold, default 0.5; ``truth_class``; ``block`` default 1024), a raster against a
    raster by :func:`evaluate` (``block`` default 2048; ``things``; ``iou``). Options of another kind
    of evaluation are refused. ``min_coverage`` (percent, rasters against rasters) is only checked
    here for its range: apply it with :meth:`EvalReport.require_coverage` once the report is kept."""
    from .object_eval import evaluate_objects, is_vector_file
    from .volume_eval import evaluate_volume, is_label_volume

    if isinstance(block, bool) or (block is not None and (not isinstance(block, int) or block < 1)):
        raise ConfigError(f"block={block!r}; expected a positive number of pixels or voxels, e.g. 2048 or 128")
    _check_min_coverage(min_coverage)
    raster_only = {"--things": things is not None, "--min-coverage": min_coverage is not None}
    if is_vector_file(truth) or is_label_volume(pred):
        given = [name for name, used in raster_only.items() if used]
        if given:
            raise ConfigError(f"{' and '.join(given)} apply to a raster prediction against a truth raster; leave "
                              f"{'them' if len(given) > 1 else 'it'} out for {truth}")
    if is_vector_file(truth):
        if is_label_volume(pred):
            raise ConfigError(f"{pred} is a volume; a vector truth ({truth}) scores 2D raster predictions")
        if tolerance is not None or halo is not None or ignore:
            raise ConfigError(f"--tolerance, --halo and --ignore do not apply to a vector truth ({truth}); leave "
                              "them out")
        return evaluate_objects(pred, truth, iou=0.5 if iou is None else iou, truth_class=truth_class,
                                class_names=class_names, block=1024 if block is None else block)
    if truth_class is not None:
        raise ConfigError(f"--truth-class applies to a vector truth (gpkg, fgb, geojson, shp, parquet); {truth} is a "
                          "raster: leave it out")
    if is_label_volume(pred):
        if iou is not None:
            raise ConfigError(f"--iou applies to rasters; {pred} is a volume: leave it out")
        return evaluate_volume(pred, truth, class_names=class_names, tolerance=tolerance, halo=halo, chunk=block,
                               ignore=ignore)
    if tolerance is not None or halo is not None:
        raise ConfigError(f"a tolerance or halo (mm) applies to volume predictions; {pred} is a raster: leave them out")
    return evaluate(pred, truth, class_names=class_names, block=2048 if block is None else block, ignore=ignore,
                    things=things, iou=0.5 if iou is None else iou)
