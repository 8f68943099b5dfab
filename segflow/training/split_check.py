"""Is the validation split big enough to mean something? One-line warnings when it is not.

Checked once the validation chips are read (:func:`validation_warnings`); each problem is one
line, shown as a :class:`~segflow.errors.SegflowWarning` (``segflow: warning: ...`` in the
training log) and kept in ``history.json`` (``warnings``):

* fewer than :data:`MIN_CHIPS` validation chips (the mean IoU of a handful of chips is noise);
* validation pixels fewer than :data:`MIN_AREA` of the training area (labelled validation pixels
  against the pixels the training chips are drawn from);
* a class present in the sampled training chips (:class:`~segflow.training.balance.ClassCounts`)
  with fewer than :data:`MIN_CLASS_PIXELS` pixels (voxels) in the validation chips: its IoU, and
  so the best epoch chosen by mean IoU, rests on almost nothing.

Each says what to change: ``validation.chips`` / ``validation.fraction`` for a hold-out, or the
validation sources when they are separate.
"""

from __future__ import annotations

from collections.abc import Sequence

from .balance import ClassCounts

__all__ = ["MIN_AREA", "MIN_CHIPS", "MIN_CLASS_PIXELS", "validation_warnings"]

MIN_CHIPS = 16
"""Fewest validation chips without a warning."""

MIN_AREA = 0.01
"""Smallest validation area, as a fraction of the training area, without a warning."""

MIN_CLASS_PIXELS = 1000
"""Fewest validation pixels (voxels) of a class present in training without a warning."""


def validation_warnings(class_names: Sequence[str], training: ClassCounts, val_counts: ClassCounts,
                        *, train_pixels: int, held_out: bool, chips_limit: int, fraction: float) -> list[str]:
    """The warnings about a validation split (empty when it is big enough).

    Parameters
    ----------
    class_names : sequence of str
        The model's classes.
    training : ClassCounts
        Counts over the sampled training chips (which classes training sees).
    val_counts : ClassCounts
        Counts over every validation chip.
    train_pixels : int
        Pixels (voxels) the training chips are drawn from (held-out cells excluded).
    held_out : bool
        Whether validation is held out of the training data (else separate sources).
    chips_limit, fraction : int, float
        ``validation.chips`` and ``validation.fraction``, for the advice.
    """
    if held_out:
        more = f"raise validation.fraction (now {fraction:g}) or validation.chips (now {chips_limit})"
    else:
        more = f"give validation sources with more labelled area, or raise validation.chips (now {chips_limit})"
    out = []
    chips = val_counts.chips
    if chips < MIN_CHIPS:
        out.append(f"validation has {chips} chips, fewer than {MIN_CHIPS}: its mean IoU (which picks the exported "
                   f"epoch) is noisy; {more}")
    labelled = val_counts.labelled
    if train_pixels > 0 and labelled < MIN_AREA * train_pixels:
        out.append(f"validation covers {labelled} labelled pixels, {labelled / train_pixels:.2%} of the training "
                   f"area ({train_pixels} pixels), under {MIN_AREA:.0%}; {more}")
    thin = [(name, int(val_counts.pixels[k])) for k, name in enumerate(class_names)
            if k < training.num_classes and training.pixels[k] > 0 and val_counts.pixels[k] < MIN_CLASS_PIXELS]
    if thin:
        listed = ", ".join(f"{name!r} {n}" for name, n in thin)
        out.append(f"validation holds fewer than {MIN_CLASS_PIXELS} pixels of classes present in training ({listed}):"
                   f" their IoU is noise or missing; {more}, so that validation holds them"
                   + ("" if held_out else " (or hold validation out of the training data: validation.fraction)"))
    return out
