"""Score a multi-label prediction (one 0/1 plane per class, classes may overlap) against a multi-label truth.

A multi-label run (:mod:`segflow.multilabel`) writes ``labels.tif`` with one band per class (0 absent,
1 present, 255 nodata) and ``present`` planes in ``mask.zarr``. Its truth is a raster on the same grid
with one band per class in the same order: 0 absent, 1 present, 255 (or the declared nodata) where the
class is not labelled. Each class is scored as its own present/absent map, block by block, with the rules
of :func:`segflow.evaluate.evaluate` applied to that map:

* a pixel counts for class k where the truth's band k is 0 or 1 (not nodata);
* where the prediction's band k is nodata on a counted pixel there is no prediction: a truth "present"
  there is a false negative of class k ("missed"), and ``coverage`` is the fraction of counted
  (pixel, class) decisions that have a prediction;
* IoU, Dice, precision and recall are those of "present" (the positive class); the mean IoU / Dice
  average the classes present in the truth or the prediction; ``pixel_accuracy`` is the fraction of
  counted (pixel, class) decisions with a prediction that are right;
* object scores at IoU >= ``iou`` for thing classes: connected regions of each class's plane, whole
  across block seams (:func:`~segflow.object_eval.raster_object_scores` on that plane).

The report's ``confusion`` holds ``[[tn, fp], [fn, tp]]`` per class (``label_kind: multilabel``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ._eval_report import ClassScore, EvalReport
from ._label_raster import LabelRaster
from .errors import InputError
from .labels import LABEL_NODATA
from .metrics import ConfusionMatrix
from .object_eval import ObjectClassScore, raster_object_scores
from .tiling import ChunkGrid

__all__ = ["evaluate_multilabel"]


def _check_truth(pred: LabelRaster, truth: LabelRaster) -> None:
    if truth.bands != pred.bands:
        kind = "a single-band class-id raster" if truth.bands == 1 else f"{truth.bands} bands"
        raise InputError(
            f"the prediction {pred.path} is multi-label with {pred.bands} classes (one 0/1 band each) but the truth "
            f"{truth.path} has {kind}; give a truth with one 0/1 band per class in the prediction's class order "
            "(255 where not labelled)")
    if pred.class_names and truth.class_names and list(truth.class_names) != list(pred.class_names):
        raise InputError(
            f"the truth's bands are {', '.join(truth.class_names)} but the prediction's classes are "
            f"{', '.join(pred.class_names)}; reorder the truth's bands (gdal_translate -b ...) to the prediction's "
            "class order")


def evaluate_multilabel(pred: LabelRaster, truth: LabelRaster, *, names: Sequence[str], things: Sequence[int],
                        notes: Sequence[str] = (), block: int = 2048, iou: float = 0.5) -> EvalReport:
    """Per-class scores of the multi-label ``pred`` against ``truth`` (both open, same grid, checked by the caller;
    see the module docstring); ``names`` one per band, ``things`` the class indices scored as objects."""
    _check_truth(pred, truth)
    k = pred.bands
    matrices = [ConfusionMatrix(2, ignore_index=LABEL_NODATA, no_prediction=LABEL_NODATA) for _ in range(k)]
    boxes = [box for _, box in ChunkGrid.create(pred.shape, block)]
    for c, cm in enumerate(matrices):
        p, t = pred.plane(c + 1), truth.plane(c + 1)
        for box in boxes:
            ys, xs = (box.start[0], box.stop[0]), (box.start[1], box.stop[1])
            try:
                cm.update(p.read(ys, xs), t.read(ys, xs))
            except InputError as exc:
                raise InputError(f"class {names[c]!r} (band {c + 1}): {exc}; multi-label bands hold 0 (absent), "
                                 "1 (present) and 255 (nodata)") from None
    objects: list[ObjectClassScore] = []
    for c in things:
        objects += raster_object_scores(pred.plane(c + 1), truth.plane(c + 1), [1], ["absent", names[c]],
                                        block=block, iou=iou)
    rows = []
    for name, cm in zip(names, matrices, strict=True):
        iou_, dice, precision, recall = cm.iou()[1], cm.dice()[1], cm.precision()[1], cm.recall()[1]
        rows.append(ClassScore(name=name, iou=float(iou_), dice=float(dice), precision=float(precision),
                               recall=float(recall), support=int(cm.support()[1]), missed=int(cm.missed[1])))
    present = [r for r, cm in zip(rows, matrices, strict=True) if cm.matrix[1].sum() + cm.missed[1]
               + cm.matrix[:, 1].sum()]
    covered = sum(cm.covered for cm in matrices)
    right = sum(int(np.trace(cm.matrix)) for cm in matrices)
    return EvalReport(
        rows=rows, mean_iou=_mean([r.iou for r in present]), mean_dice=_mean([r.dice for r in present]),
        pixel_accuracy=right / covered if covered else math.nan, pixels=sum(cm.total for cm in matrices),
        covered=covered, confusion=[cm.matrix.tolist() for cm in matrices], pred=str(pred.path),
        truth=str(truth.path), objects=objects, iou_threshold=float(iou), label_kind="multilabel",
        notes=["multi-label: each class is scored as its own present/absent map; pixels, coverage and pixel "
               "accuracy count (pixel, class) decisions", *notes])


def _mean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan

