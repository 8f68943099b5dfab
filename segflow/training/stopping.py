"""Early stopping on the validation mean IoU (``early_stopping: {patience: N, min_delta: d}``).

An epoch *improves* when its validation mean IoU exceeds the best of the epochs before it by more
than ``min_delta`` (Keras' rule; the first epoch always improves, a NaN mean IoU never does).
Training stops once ``patience`` epochs in a row have not improved: after epoch ``e`` when the last
improvement was at epoch ``e - patience``. The rule reads only the epoch history, so it holds
across ``--resume`` (and a resumed run with a larger ``patience`` continues). The package gets the
best epoch's weights (``export: best``, the default), never the last epoch's by accident.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .config import EarlyStoppingConfig
from .run import EpochRecord

__all__ = ["epochs_since_improvement", "should_stop"]


def epochs_since_improvement(mean_ious: Sequence[float], min_delta: float) -> int:
    """How many epochs at the end of ``mean_ious`` did not improve on the best before them by > ``min_delta``."""
    best, since = -math.inf, 0
    for value in mean_ious:
        score = -math.inf if math.isnan(value) else value
        if score > best + min_delta:
            best, since = score, 0
        else:
            since += 1
    return since


def should_stop(history: Sequence[EpochRecord], rule: EarlyStoppingConfig | None) -> bool:
    """Whether training stops after the last epoch of ``history`` (never without a rule)."""
    if rule is None or not history:
        return False
    return epochs_since_improvement([r.validation.mean_iou for r in history], rule.min_delta) >= rule.patience
