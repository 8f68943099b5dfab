"""Segmentation metrics with IoU as the measure, built to accumulate chunk by chunk.

* :class:`ConfusionMatrix` counts ``(truth, pred)`` pairs of class labels with one
  ``np.bincount`` per update; updates and merges are exact integer additions, so any
  split of a scene into chunks gives the same matrix as the whole scene.
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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from segflow.errors import ConfigError, InputError

__all__ = ["ConfusionMatrix", "ObjectScore", "instances_from_mask", "object_f1"]


# --------------------------------------------------------------------------- helpers


def _as_int_array(name: str, values: object) -> np.ndarray:
    """Return ``values`` as an integer numpy array (bool is read as 0/1)."""
    arr = np.asarray(values)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(
            f"{name} has dtype {arr.dtype}; expected integer labels; cast with .astype(np.int64) "
            "(round probabilities/logits to classes first)"
        )
    return arr


def _check_same_shape(pred: np.ndarray, truth: np.ndarray) -> None:
    if pred.shape != truth.shape:
        raise InputError(
            f"pred has shape {pred.shape} but truth has shape {truth.shape}; expected equal shapes"
        )


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise ``num / den`` as float64, NaN where ``den == 0``."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast_shapes(num.shape, den.shape), np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _check_int(name: str, value: object, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ConfigError(f"{name}={value!r}; expected an int >= {low}")
    return int(value)


# --------------------------------------------------------------------------- confusion matrix


class ConfusionMatrix:
    """Accumulating confusion matrix of a ``num_classes``-class segmentation.

    ``matrix[t, p]`` counts pixels of true class ``t`` predicted as ``p``:
    **rows = truth, columns = prediction**. Counts are int64.

    Pixels where ``truth`` *or* ``pred`` equals ``ignore_index`` (e.g. nodata written
    into both masks) are skipped. Any other value outside ``[0, num_classes)`` raises
    :class:`~segflow.errors.InputError`.

    Parameters
    ----------
    num_classes : int
        Number of classes ``K`` (>= 1); labels are ``0 .. K-1``.
    ignore_index : int, optional
        Label value to skip. May lie inside ``[0, K)`` (e.g. 0 to skip background), in
        which case that class never gets counts.

    Examples
    --------
    >>> cm = ConfusionMatrix(3, ignore_index=255)
    >>> for pred_chunk, truth_chunk in chunks:  # doctest: +SKIP
    ...     cm.update(pred_chunk, truth_chunk)
    >>> cm.mean_iou()  # doctest: +SKIP
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        self.num_classes = _check_int("num_classes", num_classes, low=1)
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise ConfigError(f"ignore_index={ignore_index!r}; expected an int or None, e.g. 255")
        self.ignore_index = ignore_index
        self._counts = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"pixels={self.total})"
        )

    # ----------------------------------------------------------------- accumulation

    def _check_range(self, name: str, values: np.ndarray) -> None:
        if values.size == 0:
            return
        if values.min() >= 0 and values.max() < self.num_classes:
            return
        bad = values[(values < 0) | (values >= self.num_classes)][0]
        hint = f" or ignore_index={self.ignore_index}" if self.ignore_index is not None else ""
        raise InputError(
            f"{name} contains label {int(bad)}; expected values in [0, {self.num_classes}){hint}; "
            "fix the mask or set ignore_index"
        )

    def update(self, pred: np.ndarray, truth: np.ndarray) -> ConfusionMatrix:
        """Add the pixels of one chunk.

        Parameters
        ----------
        pred, truth : np.ndarray
            Integer (or bool) label arrays of the same, arbitrary shape.

        Returns
        -------
        ConfusionMatrix
            ``self``, for chaining.
        """
        p = _as_int_array("pred", pred)
        t = _as_int_array("truth", truth)
        _check_same_shape(p, t)
        p, t = p.ravel(), t.ravel()
        if self.ignore_index is not None:
            keep = (p != self.ignore_index) & (t != self.ignore_index)
            if not keep.all():
                p, t = p[keep], t[keep]
        self._check_range("pred", p)
        self._check_range("truth", t)
        k = self.num_classes
        codes = t.astype(np.int64) * k + p.astype(np.int64)
        self._counts += np.bincount(codes, minlength=k * k).reshape(k, k)
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add the counts of ``other`` in place and return ``self``.

        ``other`` must have the same ``num_classes`` and ``ignore_index``.
        """
        if not isinstance(other, ConfusionMatrix):
            raise ConfigError(f"cannot merge a {type(other).__name__}; expected a ConfusionMatrix")
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ConfigError(
                f"cannot merge num_classes={other.num_classes}, ignore_index={other.ignore_index} "
                f"into one with num_classes={self.num_classes}, ignore_index={self.ignore_index}; "
                "build both with the same settings"
            )
        self._counts += other._counts
        return self

    def reset(self) -> None:
        """Set all counts to zero."""
        self._counts[...] = 0

    # ----------------------------------------------------------------- counts

    @property
    def matrix(self) -> np.ndarray:
        """Copy of the ``(K, K)`` int64 counts; rows = truth class, columns = predicted class."""
        return self._counts.copy()

    @property
    def total(self) -> int:
        """Number of counted (non-ignored) pixels."""
        return int(self._counts.sum())

    def _tp_fp_fn(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tp = np.diag(self._counts)
        fp = self._counts.sum(axis=0) - tp
        fn = self._counts.sum(axis=1) - tp
        return tp, fp, fn

    def support(self) -> np.ndarray:
        """Per-class number of true pixels (row sums), shape ``(K,)``."""
        return self._counts.sum(axis=1)

    # ----------------------------------------------------------------- scores

    def iou(self) -> np.ndarray:
        """Per-class IoU (Jaccard) ``TP / (TP + FP + FN)``, shape ``(K,)``; NaN for absent classes."""
        tp, fp, fn = self._tp_fp_fn()
        return _divide(tp, tp + fp + fn)

    def dice(self) -> np.ndarray:
        """Per-class Dice/F1 ``2 TP / (2 TP + FP + FN)``, shape ``(K,)``; NaN for absent classes."""
        tp, fp, fn = self._tp_fp_fn()
        return _divide(2 * tp, 2 * tp + fp + fn)

    def precision(self) -> np.ndarray:
        """Per-class precision ``TP / (TP + FP)``, shape ``(K,)``; NaN for never-predicted classes."""
        tp, fp, _ = self._tp_fp_fn()
        return _divide(tp, tp + fp)

    def recall(self) -> np.ndarray:
        """Per-class recall ``TP / (TP + FN)``, shape ``(K,)``; NaN for classes absent from the truth."""
        tp, _, fn = self._tp_fp_fn()
        return _divide(tp, tp + fn)

    def mean_iou(self) -> float:
        """Mean IoU over the classes present in the truth **or** the prediction.

        A class absent from both has an undefined IoU and is left out (it neither helps
        nor hurts); a class only predicted, or only true, counts with IoU 0. NaN when
        nothing has been counted.
        """
        iou = self.iou()
        present = ~np.isnan(iou)
        return float(iou[present].mean()) if present.any() else float("nan")

    def pixel_accuracy(self) -> float:
        """Fraction of counted pixels whose prediction equals the truth; NaN when nothing counted."""
        return float(_divide(np.trace(self._counts), self._counts.sum()))

    def table(self, class_names: Sequence[str] | None = None) -> list[dict[str, object]]:
        """Per-class rows ``{class, iou, dice, precision, recall, support}``.

        Parameters
        ----------
        class_names : sequence of str, optional
            One name per class; default ``"0" .. "K-1"``.

        Returns
        -------
        list of dict
            One row per class in label order; scores are floats (NaN if undefined),
            ``support`` is the int number of true pixels.
        """
        if class_names is None:
            class_names = [str(k) for k in range(self.num_classes)]
        if isinstance(class_names, str) or len(class_names) != self.num_classes:
            raise ConfigError(
                f"class_names={class_names!r} has {len(class_names)} entries; expected {self.num_classes}, "
                "one per class"
            )
        cols = (self.iou(), self.dice(), self.precision(), self.recall())
        support = self.support()
        return [
            {
                "class": str(name),
                "iou": float(cols[0][k]),
                "dice": float(cols[1][k]),
                "precision": float(cols[2][k]),
                "recall": float(cols[3][k]),
                "support": int(support[k]),
            }
            for k, name in enumerate(class_names)
        ]


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
