"""Class frequencies of the training chips, and the weights of ``class_weights: balanced``.

:class:`ClassCounts` adds up, over a fixed sample of training chips (the ones the normalisation
statistics are computed from, drawn by the run's sampler, so foreground oversampling counts as
it will be seen), the labelled pixels of each class and the labelled pixels of the chips each
class appears in; :data:`~segflow.training.sources.IGNORE` pixels are left out of both.

``balanced`` is **median-frequency balancing** (Eigen & Fergus, ICCV 2015, "Predicting Depth,
Surface Normals and Semantic Labels with a Common Multi-Scale Convolutional Architecture",
section 4.3)::

    w_c = median(f) / f_c,   f_c = n_c / N_c

with ``n_c`` the pixels of class ``c`` and ``N_c`` the pixels of the chips in which ``c``
appears; the median is over the classes that appear. A class that never appears in the sample
gets the largest weight of the others (its pixels, if any, are rare), and the run says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .sources import IGNORE

__all__ = ["ClassCounts", "median_frequency_weights"]


@dataclass
class ClassCounts:
    """Per-class pixel counts over chips: ``pixels[c]`` = ``n_c``, ``chip_pixels[c]`` = ``N_c`` (int64 ``(K,)``)."""

    num_classes: int
    pixels: np.ndarray = field(init=False)
    chip_pixels: np.ndarray = field(init=False)
    chips: int = 0
    labelled: int = 0  # labelled pixels counted (in any class)

    def __post_init__(self) -> None:
        self.pixels = np.zeros(self.num_classes, dtype=np.int64)
        self.chip_pixels = np.zeros(self.num_classes, dtype=np.int64)

    def add(self, labels: np.ndarray, spatial_dims: int) -> None:
        """Count one chip: class ids ``(*chip)``, or multi-label 0/1 planes ``(K, *chip)`` (255 = unlabelled)."""
        if labels.ndim == spatial_dims + 1:  # multi-label: class c's pixels are plane c's ones
            labelled = labels != IGNORE
            counts = (labels == 1).reshape(len(labels), -1).sum(axis=1).astype(np.int64)[: self.num_classes]
            totals = labelled.reshape(len(labels), -1).sum(axis=1).astype(np.int64)[: self.num_classes]
            self.labelled += int(labelled.any(axis=0).sum())
        else:
            kept = labels[labels != IGNORE].astype(np.int64)
            counts = np.bincount(kept[kept < self.num_classes], minlength=self.num_classes)[: self.num_classes]
            totals = np.full(self.num_classes, kept.size, dtype=np.int64)
            self.labelled += int(kept.size)
        self.pixels[: len(counts)] += counts
        self.chip_pixels[: len(counts)] += np.where(counts > 0, totals, 0)
        self.chips += 1

    @property
    def present(self) -> np.ndarray:
        """Bool ``(K,)``: the classes that appear in the counted chips."""
        return self.pixels > 0


def median_frequency_weights(counts: ClassCounts) -> tuple[list[float], list[int]]:
    """``w_c = median(f) / f_c`` (see the module docstring), rounded to 6 significant digits.

    Returns the weights, one per class, and the classes absent from the sample (given the largest
    weight of the others; all 1.0 when no class appears).
    """
    present = counts.present
    if not present.any():
        return [1.0] * counts.num_classes, list(range(counts.num_classes))
    freq = counts.pixels[present] / counts.chip_pixels[present]
    weights = np.full(counts.num_classes, np.nan)
    weights[present] = np.median(freq) / freq
    absent = np.flatnonzero(~present)
    weights[absent] = np.nanmax(weights)
    return [float(f"{w:.6g}") for w in weights], [int(k) for k in absent]
