"""Mask R-CNN losses (He et al. 2017; normalisations as torchvision's reference implementation).

* RPN: objectness binary cross-entropy, mean over the sampled anchors; box smooth-L1 (beta 1/9) on
  the positive anchors' deltas, summed and divided by the number of sampled anchors.
* Box head: cross-entropy over classes, mean over the sampled RoIs; smooth-L1 on the gt class's
  deltas of the foreground RoIs, summed and divided by the number of sampled RoIs. Beta is 1/9 by
  default, as torchvision (whose reference training reproduces the paper's COCO results): with the
  (10, 10, 5, 5) delta weights typical residuals are ~1, so beta 1/9 makes the loss L1-like (robust)
  for almost all of them, while Fast R-CNN's beta 1.0 would make it mostly quadratic.
* Mask: per-pixel binary cross-entropy on the mask of the gt class only (no competition between
  classes), mean over the foreground RoIs' pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["box_loss", "mask_loss", "rpn_losses", "smooth_l1"]


def smooth_l1(pred: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Sum of ``0.5 d^2 / beta`` where ``|d| < beta``, else ``|d| - 0.5 beta`` (``d = pred - target``)."""
    d = (pred - target).abs()
    return torch.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta).sum()


def rpn_losses(objectness: torch.Tensor, labels: torch.Tensor, deltas: torch.Tensor, target_deltas: torch.Tensor,
               beta: float = 1.0 / 9) -> tuple[torch.Tensor, torch.Tensor]:
    """``(objectness, box)`` losses over the sampled anchors: logits ``(S,)``, labels ``(S,)`` in
    {0, 1}, predicted and target deltas ``(S, 4)`` (only positive rows count for the box loss)."""
    n = max(labels.numel(), 1)
    obj = F.binary_cross_entropy_with_logits(objectness, labels.to(objectness.dtype), reduction="sum") / n
    pos = labels > 0
    box = smooth_l1(deltas[pos], target_deltas[pos], beta) / n
    return obj, box


def box_loss(class_logits: torch.Tensor, box_deltas: torch.Tensor, labels: torch.Tensor,
             target_deltas: torch.Tensor, beta: float = 1.0 / 9) -> tuple[torch.Tensor, torch.Tensor]:
    """``(classification, box)`` losses over the sampled RoIs: logits ``(S, K)``, class-specific deltas
    ``(S, 4 K)``, labels ``(S,)`` (0 background) and target deltas ``(S, 4)``."""
    n = max(labels.numel(), 1)
    cls = F.cross_entropy(class_logits, labels, reduction="sum") / n
    fg = torch.where(labels > 0)[0]
    per_class = box_deltas.reshape(box_deltas.shape[0], -1, 4)
    box = smooth_l1(per_class[fg, labels[fg]], target_deltas[fg], beta) / n
    return cls, box


def mask_loss(mask_logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE of ``mask_logits`` ``(P, K, M, M)`` at each foreground RoI's gt class ``labels`` ``(P,)``
    against binary ``targets`` ``(P, M, M)``; 0 (kept in the graph) when there is no foreground RoI."""
    if labels.numel() == 0:
        return mask_logits.sum() * 0.0
    picked = mask_logits[torch.arange(labels.numel(), device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(picked, targets.to(picked.dtype))
