"""Validation of a Mask R-CNN on chips: object precision / recall / F1 at mask IoU >= 0.5 and COCO mask AP.

For every validation chip the truth objects are built from its instance ids and labels as for training
(:func:`~segflow.training.instance_targets.instance_targets`); the model's detections of each thing class
are scored against the truth objects of that class (:mod:`segflow.instance_metrics`):

* mask AP@[.5:.95] (COCO: all detections, at most 100 per chip, ranked by score), averaged over the
  classes that have truth objects, and AP at IoU 0.5;
* object precision, recall and F1 at IoU >= 0.5 of the detections scoring at least the package's
  ``score_threshold`` (what tile inference keeps), counts summed over classes and chips.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..instance_metrics import MaskAP, match_instances
from ..metrics import ObjectScore
from .instance_targets import instance_targets

__all__ = ["InstanceMetrics", "evaluate_instances", "instance_metrics_table"]


def _num(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class InstanceMetrics:
    """Validation metrics of an instance-segmentation model (see the module docstring).

    ``class_names`` are the thing classes; ``class_ap`` their mask AP (NaN: no truth object);
    ``mask_ap`` the mean of the defined ones; ``ap50`` likewise at IoU 0.5; ``objects`` the counts,
    precision, recall and F1 at IoU 0.5 of detections scoring ``>= score_threshold``.
    """

    class_names: tuple[str, ...]
    class_ap: tuple[float, ...]
    mask_ap: float
    ap50: float
    objects: ObjectScore
    score_threshold: float
    chips: int

    @property
    def f1(self) -> float:
        return self.objects.f1

    def summary(self) -> str:
        o = self.objects
        return (f"mask AP {self.mask_ap:.4f}, AP50 {self.ap50:.4f}, object F1 {o.f1:.4f} (precision {o.precision:.4f}, "
                f"recall {o.recall:.4f}; IoU >= 0.5, score >= {self.score_threshold:g}) on {self.chips} chips")

    def to_dict(self) -> dict[str, Any]:
        o = self.objects
        return {"class_names": list(self.class_names), "class_ap": [_num(v) for v in self.class_ap],
                "mask_ap": _num(self.mask_ap), "ap50": _num(self.ap50),
                "objects": {"tp": o.tp, "fp": o.fp, "fn": o.fn, "precision": _num(o.precision),
                            "recall": _num(o.recall), "f1": _num(o.f1)},
                "score_threshold": self.score_threshold, "chips": self.chips}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InstanceMetrics:
        o = d["objects"]
        return cls(tuple(d["class_names"]), tuple(_float(v) for v in d["class_ap"]), _float(d["mask_ap"]),
                   _float(d["ap50"]), ObjectScore.from_counts(o["tp"], o["fp"], o["fn"]),
                   float(d["score_threshold"]), int(d["chips"]))


def _mean(values: Sequence[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


@torch.inference_mode()
def evaluate_instances(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor,
                       class_names: Sequence[str], *, score_threshold: float, device: torch.device,
                       batch_size: int = 8) -> InstanceMetrics:
    """Score ``model`` (a :class:`~segflow.models.maskrcnn.MaskRCNN`) on validation chips.

    Parameters
    ----------
    model : nn.Module
        Put in eval mode here (and left so).
    images : torch.Tensor
        ``(N, C, Y, X)`` normalised chips.
    labels, ids : torch.Tensor
        ``(N, Y, X)`` class labels and instance ids of the chips.
    class_names : sequence of str
        Every class of the model, the background (0) first.
    score_threshold : float
        Detections scoring below it are left out of precision / recall / F1 (not of AP).
    device : torch.device
        Where the model is.
    batch_size : int
        Chips per forward pass.
    """
    model.eval()
    num = len(class_names)
    aps = [MaskAP() for _ in range(1, num)]
    tp = fp = fn = 0
    for lo in range(0, images.shape[0], batch_size):
        detections = model(images[lo:lo + batch_size].to(device))
        for k, det in enumerate(detections):
            truth = instance_targets(labels[lo + k].numpy(), ids[lo + k].numpy(), num)
            masks, scores, found = (det["masks"].cpu().numpy(), det["scores"].cpu().numpy(),
                                    det["labels"].cpu().numpy())
            for c in range(1, num):
                true_masks = truth["masks"][truth["labels"] == c].numpy().astype(bool)
                mine = found == c
                aps[c - 1].add(masks[mine], scores[mine], true_masks)
                kept = mine & (scores >= score_threshold)
                matches = match_instances(masks[kept], scores[kept], true_masks, iou=0.5)
                tp, fp, fn = tp + matches.tp, fp + matches.fp, fn + matches.fn
    class_ap = tuple(ap.value() for ap in aps)
    ap50 = [float(ap.per_threshold()[0]) for ap in aps]
    return InstanceMetrics(tuple(class_names[1:]), class_ap, _mean(class_ap), _mean(ap50),
                           ObjectScore.from_counts(tp, fp, fn), float(score_threshold), int(images.shape[0]))


def instance_metrics_table(metrics: InstanceMetrics) -> str:
    """Markdown table: mask AP per thing class, then the object counts and P / R / F1."""

    def fmt(v: float) -> str:
        return "–" if math.isnan(v) else f"{v:.4f}"

    o = metrics.objects
    rows = ["| class | mask AP@[.5:.95] |", "| --- | --- |"]
    rows += [f"| {n} | {fmt(ap)} |" for n, ap in zip(metrics.class_names, metrics.class_ap, strict=True)]
    rows += [f"| **mean** | **{fmt(metrics.mask_ap)}** |", f"| AP50 (mean) | {fmt(metrics.ap50)} |", "",
             f"Objects at mask IoU >= 0.5, detections scoring >= {metrics.score_threshold:g}:", "",
             "| TP | FP | FN | precision | recall | F1 |", "| --- | --- | --- | --- | --- | --- |",
             f"| {o.tp} | {o.fp} | {o.fn} | {fmt(o.precision)} | {fmt(o.recall)} | {fmt(o.f1)} |"]
    return "\n".join(rows)
