"""Segmentation metrics with IoU as the measure, built to accumulate chunk by chunk.

* :class:`ConfusionMatrix` counts ``(truth, pred)`` pairs of class labels with one
  ``np.bincount`` per update; updates and merges are exact integer additions, so any
  split of a scene into chunks gives the same matrix as the whole scene. Ignored truth
  values leave only those truth pixels out (never pixels by their prediction), and truth
  pixels without a prediction count as misses of their class (see the class).
* :func:`object_f1` is the SpaceNet building metric: one-to-one matching of predicted to
  true instances at an IoU threshold, scored by precision/recall/F1.
* :func:`instances_from_mask` turns a class mask into instance labels.

All arrays are numpy arrays of any shape (``(H, W)``, ``(D, H, W)``, a batch ...); the
metrics only look at pixels, so the axis order just has to match between ``pred`` and
``truth``.

Undefined ratios (``0 / 0``, e.g. the IoU of a class absent from both truth and
prediction) are ``NaN``, never a warning or an exception.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from segflow._confusion import ConfusionMatrix, _as_int_array, _check_same_shape, _divide
from segflow.errors import ConfigError, InputError

__all__ = ["ConfusionMatrix", "ObjectScore", "instances_from_mask", "object_f1"]


# --------------------------------------------------------------------------- object F1


@dataclass(frozen=True)
class ObjectScore:
    """Object-level detection score.

    ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)`` (NaN when the
    denominator is 0) and ``f1 = 2 tp / (2 tp + fp + fn)`` (NaN when there are neither
    true nor predicted objects). Scores of several tiles add up with ``+`` (counts are
    summed, ratios recomputed).
    """

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float

    @classmethod
    def from_counts(cls, tp: int, fp: int, fn: int) -> ObjectScore:
        """Build a score from match counts."""
        return cls(
            tp=int(tp),
            fp=int(fp),
            fn=int(fn),
            precision=float(_divide(np.asarray(tp), np.asarray(tp + fp))),
            recall=float(_divide(np.asarray(tp), np.asarray(tp + fn))),
            f1=float(_divide(np.asarray(2 * tp), np.asarray(2 * tp + fp + fn))),
        )

    def __add__(self, other: ObjectScore) -> ObjectScore:
        if not isinstance(other, ObjectScore):
            return NotImplemented
        return ObjectScore.from_counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


def _check_instances(name: str, labels: object) -> np.ndarray:
    arr = _as_int_array(name, labels)
    if arr.size and arr.min() < 0:
        raise InputError(f"{name} contains id {int(arr.min())}; expected instance ids >= 0 (0 = background)")
    return arr


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relabel instance ids to ``1..n`` (0 stays background); return the flat labels and areas ``(n,)``."""
    flat = labels.ravel()
    top = int(flat.max()) if flat.size else 0
    if top <= 2 * flat.size + 1024:  # dense ids: a lookup table is cheaper than sorting
        counts = np.bincount(flat.astype(np.intp, copy=False), minlength=1)
        ids = np.flatnonzero(counts[1:]) + 1
        lut = np.zeros(top + 1, dtype=np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return lut[flat], counts[ids]
    uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    offset = 0 if uniq[0] == 0 else 1
    first = 1 - offset
    return inverse.ravel().astype(np.int64) + offset, counts[first:]


def _pair_intersections(
    pred: np.ndarray, truth: np.ndarray, n_truth: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersections of all overlapping (pred, truth) pairs: ``(pred_id, truth_id, pixels)``, ids from 1."""
    both = (pred > 0) & (truth > 0)
    codes = pred[both] * (n_truth + 1) + truth[both]
    n_cells = (int(pred.max(initial=0)) + 1) * (n_truth + 1)
    if n_cells <= 2 * codes.size + 65536:  # one bincount over the pair codes
        counts = np.bincount(codes, minlength=1)
        pairs = np.flatnonzero(counts)
        inter = counts[pairs]
    else:  # too many ids for a dense table: count the distinct pairs by sorting
        pairs, inter = np.unique(codes, return_counts=True)
    return pairs // (n_truth + 1), pairs % (n_truth + 1), inter


def _greedy_matches(iou: np.ndarray, pred_ids: np.ndarray, truth_ids: np.ndarray) -> int:
    """One-to-one matching by descending IoU (ties: lower pred id, then lower truth id); return #matches."""
    order = np.lexsort((truth_ids, pred_ids, -iou))
    used_pred: set[int] = set()
    used_truth: set[int] = set()
    for k in order:
        p, t = int(pred_ids[k]), int(truth_ids[k])
        if p not in used_pred and t not in used_truth:
            used_pred.add(p)
            used_truth.add(t)
    return len(used_pred)


def object_f1(
    pred_instances: np.ndarray, truth_instances: np.ndarray, iou_threshold: float = 0.5
) -> ObjectScore:
    """SpaceNet-style object F1: one-to-one matching of instances at an IoU threshold.

    A predicted object and a true object are a candidate pair when their IoU is
    ``>= iou_threshold``; candidates are matched greedily by descending IoU, each object
    used at most once. Matches are true positives, unmatched predictions false
    positives, unmatched truth objects false negatives. Intersections of all pairs come
    from one bincount over the pixels where both maps are foreground.

    Parameters
    ----------
    pred_instances, truth_instances : np.ndarray
        Integer instance-label arrays of the same, arbitrary shape (e.g. ``(H, W)``);
        0 = background, other ids need not be consecutive.
    iou_threshold : float
        Minimum IoU of a match, in ``(0, 1]``; SpaceNet uses 0.5.

    Returns
    -------
    ObjectScore
        ``tp, fp, fn, precision, recall, f1``.
    """
    threshold = float(iou_threshold) if isinstance(iou_threshold, numbers.Real) else float("nan")
    if isinstance(iou_threshold, bool) or not 0.0 < threshold <= 1.0:
        raise ConfigError(f"iou_threshold={iou_threshold!r}; expected a number in (0, 1], e.g. 0.5")
    pred = _check_instances("pred_instances", pred_instances)
    truth = _check_instances("truth_instances", truth_instances)
    _check_same_shape(pred, truth)
    pred_flat, pred_area = _compact(pred)
    truth_flat, truth_area = _compact(truth)
    pred_ids, truth_ids, inter = _pair_intersections(pred_flat, truth_flat, truth_area.size)
    union = pred_area[pred_ids - 1] + truth_area[truth_ids - 1] - inter
    iou = inter / union
    keep = iou >= threshold
    tp = _greedy_matches(iou[keep], pred_ids[keep], truth_ids[keep])
    return ObjectScore.from_counts(tp, pred_area.size - tp, truth_area.size - tp)


def instances_from_mask(mask: np.ndarray, class_value: int, connectivity: int = 1) -> np.ndarray:
    """Label the connected components of ``mask == class_value`` as instances.

    Parameters
    ----------
    mask : np.ndarray
        Integer class mask of any dimensionality (e.g. ``(H, W)`` or ``(D, H, W)``).
    class_value : int
        The class whose pixels form the objects.
    connectivity : int
        ``1`` = faces only (4-connectivity in 2D, 6 in 3D) up to ``mask.ndim`` = full
        (8 in 2D, 26 in 3D), as in ``scipy.ndimage.generate_binary_structure``.

    Returns
    -------
    np.ndarray
        ``int32`` instance labels of the same shape: 0 = background, objects ``1..n``.
    """
    arr = _as_int_array("mask", mask)
    if arr.ndim == 0:
        raise InputError("mask is a scalar; expected an array with at least one axis")
    if (
        isinstance(connectivity, bool)
        or not isinstance(connectivity, int)
        or not 1 <= connectivity <= arr.ndim
    ):
        raise ConfigError(
            f"connectivity={connectivity!r}; expected an int in [1, {arr.ndim}] for a {arr.ndim}D mask"
        )
    structure = ndimage.generate_binary_structure(arr.ndim, connectivity)
    labels, _ = ndimage.label(arr == class_value, structure=structure)
    return np.asarray(labels, dtype=np.int32)
