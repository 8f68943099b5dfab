"""Instance-segmentation metrics: objects matched at a mask IoU, object P/R/F1, and COCO mask AP (pure numpy).

Used by Mask R-CNN training (validation), by evaluation and by benchmarks. Objects are given either as
a label map (a 2D integer raster of instance ids, 0 = none; object ``i`` is the ``i``-th smallest id)
or as boolean masks (a list of 2D arrays, or one ``(N, H, W)`` array).

Matching follows COCO (``pycocotools.cocoeval.COCOeval.evaluateImg``, non-crowd objects, area range
all): predictions in order of decreasing score (stable), each takes the not yet matched truth object
of highest mask IoU, if that IoU is ``>= iou`` (of equal IoUs the later truth object wins, as there).
:func:`match_instances` gives true/false positives and misses and from them precision
``tp / (tp + fp)``, recall ``tp / (tp + fn)`` and F1 ``2 tp / (2 tp + fp + fn)``
(:class:`segflow.metrics.ObjectScore`; NaN when a denominator is 0).

:class:`MaskAP` is COCO's mask AP (``AP`` of ``COCOeval`` with ``iouType="segm"``) for one class: per
image the ``max_detections`` best predictions are matched at each IoU threshold 0.50:0.05:0.95;
then over all images the predictions are ranked by score, precision is made non-increasing in recall,
read at the 101 recall points 0:0.01:1 (0 beyond the highest recall reached), and averaged over the
points and the thresholds. With no truth object in any image the AP is NaN (COCO's -1). For several
classes COCO averages the per-class APs over the classes that have truth objects.

Memory: each object is kept as its bounding box and the mask cropped to it; IoUs are computed only
for pairs whose boxes overlap, so thousands of objects per image cost little more than their pixels.
Written here rather than taken from pycocotools (which the tests compare against) because the library
keeps its dependencies to the ones it declares, and pycocotools' RLE masks need the whole image per object.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from .errors import InputError
from .metrics import ObjectScore

__all__ = ["IOU_THRESHOLDS", "RECALL_POINTS", "Instances", "MaskAP", "Matches", "as_instances", "mask_ap",
           "match_instances"]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
"""COCO's IoU thresholds 0.50:0.05:0.95."""
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
"""COCO's 101 recall points at which precision is read."""

Masks = npt.ArrayLike | Sequence[npt.ArrayLike]


@dataclass(frozen=True)
class Instances:
    """Objects of one image: ``boxes`` ``(N, 4)`` int64 ``(y0, x0, y1, x1)`` (end exclusive), each
    object's mask cropped to its box, and ``areas`` ``(N,)`` in pixels."""

    boxes: npt.NDArray[np.int64]
    crops: tuple[npt.NDArray[np.bool_], ...]
    areas: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.crops)


def _from_masks(masks: Iterable[np.ndarray]) -> Instances:
    boxes, crops, areas = [], [], []
    shape = None
    for mask in masks:
        m = np.asarray(mask).astype(bool, copy=False)
        if m.ndim != 2 or (shape is not None and m.shape != shape):
            raise InputError(f"instance masks must be 2D and of one shape, got {m.shape} after {shape}; pass (Y, X) "
                             "masks of one image")
        shape = m.shape
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if rows.size == 0:
            boxes.append((0, 0, 0, 0))
            crops.append(np.zeros((0, 0), dtype=bool))
            areas.append(0)
            continue
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        crop = m[y0:y1, x0:x1]
        boxes.append((y0, x0, y1, x1))
        crops.append(crop)
        areas.append(int(crop.sum()))
    return Instances(np.asarray(boxes, dtype=np.int64).reshape(-1, 4), tuple(crops), np.asarray(areas, np.int64))


def _from_label_map(ids: np.ndarray) -> Instances:
    if ids.size and ids.min() < 0:
        raise InputError(f"instance label map holds id {int(ids.min())}; expected ids >= 0 (0 = no object)")
    values, dense = np.unique(ids, return_inverse=True)
    dense = dense.reshape(ids.shape) + (0 if values.size and values[0] == 0 else 1)
    count = int(values.size - (1 if values.size and values[0] == 0 else 0))
    boxes, crops, areas = [], [], []
    found = ndimage.find_objects(dense, max_label=count) if dense.size else []  # scipy fails on an empty image
    for k, where in enumerate(found, start=1):
        assert where is not None
        crop = dense[where] == k
        boxes.append((where[0].start, where[1].start, where[0].stop, where[1].stop))
        crops.append(crop)
        areas.append(int(crop.sum()))
    return Instances(np.asarray(boxes, dtype=np.int64).reshape(-1, 4), tuple(crops), np.asarray(areas, np.int64))


def as_instances(objects: Masks | Instances) -> Instances:
    """Objects as :class:`Instances`: from a 2D integer label map, boolean masks (a list or ``(N, H, W)``)."""
    if isinstance(objects, Instances):
        return objects
    if isinstance(objects, np.ndarray) and objects.ndim == 2:
        if not (np.issubdtype(objects.dtype, np.integer) or objects.dtype == bool):
            raise InputError(f"a label map must hold integer instance ids, got dtype {objects.dtype}; pass ids or "
                             "a list of boolean masks")
        return _from_label_map(objects.astype(np.int64, copy=False))
    if isinstance(objects, np.ndarray) and objects.ndim not in (2, 3):
        raise InputError(f"objects must be a (Y, X) label map or (N, Y, X) masks, got shape {objects.shape}")
    return _from_masks(objects)  # type: ignore[arg-type]


def _ious(pred: Instances, truth: Instances, block: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask IoU of every (prediction, truth) pair whose boxes overlap: ``(pred index, truth index, IoU)``,
    ordered by prediction then truth index."""
    pi_all, ti_all, iou_all = [], [], []
    a, b = pred.boxes, truth.boxes
    for lo in range(0, len(pred), block):
        p = a[lo:lo + block, None, :]
        overlap = ((np.minimum(p[..., 2], b[None, :, 2]) > np.maximum(p[..., 0], b[None, :, 0]))
                   & (np.minimum(p[..., 3], b[None, :, 3]) > np.maximum(p[..., 1], b[None, :, 1])))
        for i, j in zip(*np.nonzero(overlap), strict=True):
            i = int(i) + lo
            y0, x0 = max(a[i, 0], b[j, 0]), max(a[i, 1], b[j, 1])
            y1, x1 = min(a[i, 2], b[j, 2]), min(a[i, 3], b[j, 3])
            cp = pred.crops[i][y0 - a[i, 0]:y1 - a[i, 0], x0 - a[i, 1]:x1 - a[i, 1]]
            ct = truth.crops[j][y0 - b[j, 0]:y1 - b[j, 0], x0 - b[j, 1]:x1 - b[j, 1]]
            inter = int(np.count_nonzero(cp & ct))
            if inter:
                pi_all.append(i)
                ti_all.append(int(j))
                iou_all.append(inter / (pred.areas[i] + truth.areas[j] - inter))
    return (np.asarray(pi_all, dtype=np.int64), np.asarray(ti_all, dtype=np.int64),
            np.asarray(iou_all, dtype=np.float64))


def _match(order: np.ndarray, pairs: tuple[np.ndarray, np.ndarray, np.ndarray], num_truth: int,
           thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(T, len(order))`` index of the truth object each prediction (in ``order``) matches, -1 for none."""
    pi, ti, iou = pairs
    starts = np.searchsorted(pi, np.arange(int(pi.max(initial=-1)) + 2))
    out = np.full((len(thresholds), len(order)), -1, dtype=np.int64)
    for t, threshold in enumerate(thresholds):
        taken = np.zeros(num_truth, dtype=bool)
        for d, i in enumerate(order):
            if i + 1 >= len(starts):
                continue
            best, m = min(float(threshold), 1 - 1e-10), -1
            for j, value in zip(ti[starts[i]:starts[i + 1]], iou[starts[i]:starts[i + 1]], strict=True):
                if taken[j] or value < best:
                    continue
                best, m = value, int(j)
            if m >= 0:
                taken[m] = True
                out[t, d] = m
    return out


def _ranked(scores: npt.ArrayLike, count: int) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape != (count,):
        raise InputError(f"got {s.size} scores for {count} predicted objects; give one score per object")
    return np.argsort(-s, kind="mergesort")


@dataclass(frozen=True)
class Matches:
    """Predictions matched to truth objects at one IoU: ``matched[i]`` is the truth index of prediction
    ``i`` (input order), -1 when it is a false positive."""

    matched: npt.NDArray[np.int64]
    num_truth: int

    @property
    def tp(self) -> int:
        return int(np.count_nonzero(self.matched >= 0))

    @property
    def fp(self) -> int:
        return int(self.matched.size) - self.tp

    @property
    def fn(self) -> int:
        return self.num_truth - self.tp

    @property
    def score(self) -> ObjectScore:
        """Counts with precision, recall and F1 (add scores of several images with ``+``)."""
        return ObjectScore.from_counts(self.tp, self.fp, self.fn)


def match_instances(pred_masks: Masks | Instances, pred_scores: npt.ArrayLike, truth_masks: Masks | Instances,
                    iou: float = 0.5) -> Matches:
    """Match predicted to truth objects of one image by decreasing score at mask IoU ``>= iou`` (COCO rule).

    Parameters
    ----------
    pred_masks, truth_masks : label map, boolean masks or Instances
        The objects (see the module docstring).
    pred_scores : array_like
        One score per predicted object.
    iou : float
        The lowest IoU of a match (0.5: a match is then unique whatever the order).

    Returns
    -------
    Matches
        Per prediction the truth object it matched; ``.score`` has TP/FP/FN, precision, recall and F1.
    """
    if not 0.0 < iou <= 1.0:
        raise InputError(f"iou must be in (0, 1], got {iou}")
    pred, truth = as_instances(pred_masks), as_instances(truth_masks)
    order = _ranked(pred_scores, len(pred))
    matched = np.full(len(pred), -1, dtype=np.int64)
    matched[order] = _match(order, _ious(pred, truth), len(truth), [iou])[0]
    return Matches(matched, len(truth))


@dataclass
class MaskAP:
    """COCO mask AP of one class, accumulated image by image (:meth:`add`, then :meth:`value`)."""

    max_detections: int = 100
    _scores: list[np.ndarray] = field(default_factory=list)
    _hits: list[np.ndarray] = field(default_factory=list)
    num_truth: int = 0

    def add(self, pred_masks: Masks | Instances, pred_scores: npt.ArrayLike, truth_masks: Masks | Instances) -> None:
        """One image's predicted objects (with scores) and truth objects."""
        pred, truth = as_instances(pred_masks), as_instances(truth_masks)
        order = _ranked(pred_scores, len(pred))[: self.max_detections]
        hits = _match(order, _ious(pred, truth), len(truth), IOU_THRESHOLDS) >= 0
        self._scores.append(np.asarray(pred_scores, dtype=np.float64).reshape(-1)[order])
        self._hits.append(hits)
        self.num_truth += len(truth)

    def per_threshold(self) -> np.ndarray:
        """AP at each of :data:`IOU_THRESHOLDS` (NaN without truth objects)."""
        if self.num_truth == 0:
            return np.full(IOU_THRESHOLDS.size, np.nan)
        scores = np.concatenate(self._scores)  # truth objects came with at least one image
        hits = np.concatenate(self._hits, axis=1)
        hits = hits[:, np.argsort(-scores, kind="mergesort")]
        out = np.zeros(IOU_THRESHOLDS.size)
        for t in range(IOU_THRESHOLDS.size):
            tp = np.cumsum(hits[t], dtype=np.float64)
            fp = np.cumsum(~hits[t], dtype=np.float64)
            recall = tp / self.num_truth
            precision = tp / (tp + fp + np.spacing(1))
            precision = np.maximum.accumulate(precision[::-1])[::-1]  # non-increasing in recall
            at = np.searchsorted(recall, RECALL_POINTS, side="left")
            q = np.zeros(RECALL_POINTS.size)
            reached = at < precision.size
            q[reached] = precision[at[reached]]
            out[t] = float(np.mean(q))
        return out

    def value(self) -> float:
        """Mask AP averaged over IoU 0.50:0.05:0.95 (NaN without truth objects)."""
        return float(np.mean(self.per_threshold()))


def mask_ap(images: Iterable[tuple[Masks | Instances, npt.ArrayLike, Masks | Instances]], *,
            max_detections: int = 100) -> float:
    """COCO mask AP@[.5:.95] of one class over ``(pred_masks, pred_scores, truth_masks)`` per image.

    Returns
    -------
    float
        The AP (NaN when no image holds a truth object).
    """
    ap = MaskAP(max_detections)
    for pred, scores, truth in images:
        ap.add(pred, scores, truth)
    return ap.value()
