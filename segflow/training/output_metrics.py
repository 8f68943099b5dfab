"""Labels from a network's logits by its kind of output, and the metrics of multi-label models.

:func:`predict_labels` turns logits ``(N, C_out, *chip)`` into what the model's package would
label (as :class:`~segflow.predict.Predictor` and :mod:`segflow.stitch` do): softmax: the
arg-max class ``(N, *chip)``; binary sigmoid: class 1 where ``sigmoid(logit) > 0.5`` (the arg-max of
``[1 - p, p]``); multi-label: ``(N, K, *chip)`` planes, 1 where ``sigmoid(logit_k) >= thresholds[k]``.

:class:`MultiLabelAccumulator` scores multi-label predictions: each class is a binary problem of
its own plane, counted by a 2-class :class:`~segflow.metrics.ConfusionMatrix` (0 absent, 1
present; truth 255 ignored, a prediction of 255 on a labelled pixel a miss), so class k's IoU
and Dice are those of "present" in its plane; the mean IoU averages the classes with a defined
IoU; the pixel accuracy is the fraction of labelled (pixel, class) decisions that are right; and
a thing class's objects are the connected regions of its plane.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..metrics import ConfusionMatrix, ObjectScore, instances_from_mask, object_f1
from ..models.output import OutputSpec
from .sources import IGNORE

if TYPE_CHECKING:
    from .evaluation import Metrics

__all__ = ["MultiLabelAccumulator", "predict_labels"]


def predict_labels(logits: torch.Tensor, output: OutputSpec | None, thresholds: Sequence[float] | None = None
                   ) -> np.ndarray:
    """Labels (uint8, on the CPU) from logits ``(N, C_out, *chip)`` as the package's outputs give them.

    Softmax (``output`` None or softmax): ``(N, *chip)`` arg-max; binary sigmoid: ``(N, *chip)``
    0/1; multi-label (``thresholds``, one per class): ``(N, K, *chip)`` 0/1 planes.
    """
    if output is None or output.activation == "softmax":
        return logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
    probability = torch.sigmoid(logits.float())
    if not output.multilabel:
        return (probability[:, 0] > 0.5).to(torch.uint8).cpu().numpy()
    assert thresholds is not None
    limit = torch.tensor(list(thresholds), dtype=torch.float32, device=logits.device)
    return (probability >= limit.reshape(1, -1, *(1,) * (logits.ndim - 2))).to(torch.uint8).cpu().numpy()


class MultiLabelAccumulator:
    """Per-class binary confusion matrices and object matches of multi-label planes, chunk by chunk.

    Same interface as :class:`~segflow.training.evaluation.MetricsAccumulator`: :meth:`predict`,
    :meth:`update` with ``(K, *spatial)`` planes, :meth:`result`.
    """

    def __init__(self, class_names: Sequence[str], things: Sequence[int], thresholds: Sequence[float]):
        self.names = tuple(class_names)
        self.things = tuple(things)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.output = OutputSpec(activation="sigmoid", multilabel=True, thresholds=list(self.thresholds))
        self.matrices = [ConfusionMatrix(2, ignore_index=IGNORE, no_prediction=IGNORE) for _ in self.names]
        self.objects = {k: ObjectScore.from_counts(0, 0, 0) for k in self.things}

    def predict(self, logits: torch.Tensor) -> np.ndarray:
        """Planes ``(N, K, *chip)`` uint8 from logits ``(N, K, *chip)``."""
        return predict_labels(logits, self.output, self.thresholds)

    def update(self, pred: np.ndarray, truth: np.ndarray) -> None:
        """Count one chunk: ``pred`` and ``truth`` are ``(K, *spatial)`` planes (0, 1, 255)."""
        if pred.shape != truth.shape or pred.shape[0] != len(self.names):
            raise ValueError(f"planes {pred.shape} and truth {truth.shape}: expected ({len(self.names)}, *spatial) "
                             "each")
        pred = np.where(truth == IGNORE, IGNORE, pred).astype(np.uint8)
        for k, matrix in enumerate(self.matrices):
            matrix.update(pred[k], truth[k])
        for k in self.things:
            score = object_f1(instances_from_mask(pred[k], 1), instances_from_mask(truth[k], 1))
            self.objects[k] = self.objects[k] + score

    def result(self) -> Metrics:
        """Per-class IoU/Dice of "present", their mean, (pixel, class) accuracy, object F1 of things."""
        from .evaluation import Metrics

        iou = tuple(float(m.iou()[1]) for m in self.matrices)
        dice = tuple(float(m.dice()[1]) for m in self.matrices)
        defined = [v for v in iou if not math.isnan(v)]
        total = sum(m.total for m in self.matrices)
        right = sum(int(np.trace(m.matrix)) for m in self.matrices)
        return Metrics(
            class_names=self.names, iou=iou, dice=dice,
            mean_iou=float(np.mean(defined)) if defined else math.nan,
            pixel_accuracy=right / total if total else math.nan,
            object_f1={self.names[k]: s.f1 for k, s in self.objects.items()},
            pixels=max((m.total for m in self.matrices), default=0),
        )
