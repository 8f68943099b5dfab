"""One-to-one matching of predicted to true objects by pixel IoU, from pair intersections summed over blocks.

Shared by :mod:`segflow.object_eval` (truth polygons) and :func:`segflow.evaluate.evaluate` (truth
label rasters). Objects carry ids global across block seams (:func:`segflow.instances.label_instances`
or the truth's feature rows), so an object cut by a seam is one object: for every block the pixels
covered by both a prediction object ``p`` and a truth object ``t`` are counted per pair ``(p, t)``
(:class:`PairCounts`), summed over blocks, and the pairs are matched at an IoU threshold
(:func:`match_pairs`). Memory: the distinct overlapping pairs (merged whenever more than
``_BUFFER`` are held) and the per-object tables, never the scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["PairCounts", "greedy_pairs", "match_pairs"]

_BUFFER = 1 << 22  # pair counts held before they are merged


@dataclass
class PairCounts:
    """Pixels shared by (prediction object, truth object) pairs, summed block by block.

    ``n_truth`` is the number of truth objects (ids ``1..n_truth``); a pair is coded
    ``pred_id * (n_truth + 1) + truth_id``.
    """

    n_truth: int
    codes: list[np.ndarray] = field(default_factory=list)
    counts: list[np.ndarray] = field(default_factory=list)
    held: int = 0

    def add_ids(self, pred_ids: np.ndarray, truth_ids: np.ndarray) -> None:
        """Count the pixels of one block: ``pred_ids`` and ``truth_ids`` are id arrays of one shape (0 = none)."""
        p, t = pred_ids.ravel(), truth_ids.ravel()
        both = (p > 0) & (t > 0)
        self.add_pairs(p[both].astype(np.int64) * (self.n_truth + 1) + t[both])

    def add_pairs(self, codes: np.ndarray) -> None:
        """Count one pixel per pair code."""
        unique, counts = np.unique(codes, return_counts=True)
        self.codes.append(unique)
        self.counts.append(counts)
        self.held += unique.size
        if self.held > _BUFFER:
            self.merge()

    def merge(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct pair codes and their pixel counts so far (both ``(m,)`` int64)."""
        if not self.codes:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        unique, inverse = np.unique(np.concatenate(self.codes), return_inverse=True)
        total = np.bincount(inverse.ravel(), weights=np.concatenate(self.counts), minlength=unique.size)
        self.codes, self.counts, self.held = [unique], [total.astype(np.int64)], unique.size
        return unique, self.counts[0]


def greedy_pairs(iou: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Indices of the pairs kept by a one-to-one assignment by descending IoU (ties: lower pred, then truth id).

    Why the threshold 0.5 makes this unique. Prediction objects are pairwise disjoint pixel sets, and
    so are truth objects when their polygons do not overlap. If ``IoU(p, t) > 1/2`` then
    ``|p ∩ t| > |p ∪ t| / 2 >= |t| / 2``: ``p`` holds more than half of ``t``. Two disjoint
    predictions cannot both hold more than half of ``t`` (``|p1 ∩ t| + |p2 ∩ t| <= |t|``), and by
    symmetry two disjoint truths cannot both hold more than half of ``p``: pairs with IoU > 1/2 are
    one-to-one, and any assignment keeps them all. At IoU >= 1/2 the only conflict is the equality
    case ``|p1 ∩ t| = |p2 ∩ t| = |t| / 2`` with ``|pi ∪ t| = |t|``, i.e. ``t`` split exactly in two
    halves ``p1, p2 ⊂ t`` (or a prediction split in two truths), every pair at IoU exactly 1/2; such a
    ``pi`` lies inside ``t`` and so meets no other truth, so the conflict is a star of two pairs of
    which exactly one is kept whatever the tie-break: the number of matches is unique for any
    threshold >= 0.5. Below 0.5 (or with overlapping truth polygons) this is the usual greedy
    best-IoU assignment (SpaceNet), not an optimal one.
    """
    order = np.lexsort((truth, pred, -iou))
    used_pred: set[int] = set()
    used_truth: set[int] = set()
    kept = []
    for k in order.tolist():
        p, t = int(pred[k]), int(truth[k])
        if p not in used_pred and t not in used_truth:
            used_pred.add(p)
            used_truth.add(t)
            kept.append(k)
    return np.asarray(kept, dtype=np.int64)


def match_pairs(counts: PairCounts, pred_class: np.ndarray, pred_area: np.ndarray, truth_class: np.ndarray,
                truth_area: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matched pairs of objects of one class at ``IoU >= threshold``, IoU counted in pixels.

    ``pred_class`` / ``pred_area`` (``(n_pred,)``, row ``i`` = prediction id ``i + 1``) and
    ``truth_class`` / ``truth_area`` (``(n_truth,)``) are each object's class and pixel count.
    Returns the matched prediction ids, truth ids and IoUs, each ``(m,)``.
    """
    codes, inter = counts.merge()
    p, q = codes // (counts.n_truth + 1), codes % (counts.n_truth + 1)
    same = pred_class[p - 1] == truth_class[q - 1]
    ious = inter / (pred_area[p - 1] + truth_area[q - 1] - inter)
    candidate = np.flatnonzero(same & (ious >= threshold))
    chosen = candidate[greedy_pairs(ious[candidate], p[candidate], q[candidate])]
    return p[chosen], q[chosen], ious[chosen]
