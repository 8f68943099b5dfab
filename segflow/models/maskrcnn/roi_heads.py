"""The RoI heads of Mask R-CNN: proposal sampling, box and mask losses, detections at inference.

Training (per image): the ground-truth boxes join the proposals; proposals with IoU >= ``fg_iou``
to a ground truth are foreground (its class), < ``bg_iou`` background; ``batch_per_image`` are
sampled with up to ``positive_fraction`` foreground. The box head sees all sampled RoIs (7x7
features), the mask head the foreground ones (14x14 features -> 28x28 logits; targets: the matched
gt mask RoIAligned into the RoI). Box deltas use weights (10, 10, 5, 5).

Inference: class probabilities by softmax; each non-background class's box is decoded and clipped;
scores ``> score_thresh``, boxes of at least ``min_size``, per-class NMS at ``nms_thresh``, the best
``detections_per_image`` kept; the mask head then runs on the detected boxes and the sigmoid of the
predicted class's mask is returned (``(D, 28, 28)``, in box coordinates).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from segflow.models.maskrcnn.heads import BoxHead, MaskHead, pool_rois
from segflow.models.maskrcnn.losses import box_loss, mask_loss
from segflow.models.maskrcnn.ops import BoxCoder, batched_nms, clip_boxes, remove_small_boxes
from segflow.models.maskrcnn.targets import BELOW, mask_targets, match, sample_balanced

__all__ = ["RoIHeads", "RoISettings"]


@dataclass(frozen=True)
class RoISettings:
    """Hyper-parameters of the box and mask heads: the paper's / torchvision's, except the widths
    (paper: ``representation`` 1024, ``mask_width`` 256), scaled to the small default backbone."""

    representation: int = 256
    mask_width: int = 64
    mask_convs: int = 4
    box_pool: int = 7
    mask_pool: int = 14
    sampling_ratio: int = 2
    canonical_scale: float = 224.0
    fg_iou: float = 0.5
    bg_iou: float = 0.5
    batch_per_image: int = 512
    positive_fraction: float = 0.25
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100
    min_size: float = 1e-2
    box_loss_beta: float = 1.0 / 9


@dataclass
class _Sampled:
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    deltas: list[torch.Tensor]
    matched: list[torch.Tensor]


class RoIHeads(nn.Module):
    """Box and mask branches over pyramid levels P2..P5 (``levels``, ``strides``)."""

    def __init__(self, channels: int, num_classes: int, settings: RoISettings) -> None:
        super().__init__()
        self.settings = settings
        self.num_classes = num_classes
        self.box_head = BoxHead(channels, settings.box_pool, settings.representation, num_classes)
        self.mask_head = MaskHead(channels, settings.mask_width, settings.mask_convs, num_classes)
        self.coder = BoxCoder((10.0, 10.0, 5.0, 5.0))

    def _pool(self, levels: Sequence[torch.Tensor], strides: Sequence[int], boxes: Sequence[torch.Tensor],
              size: int) -> torch.Tensor:
        s = self.settings
        return pool_rois(levels, strides, boxes, size, s.sampling_ratio, s.canonical_scale)

    def losses(self, levels: Sequence[torch.Tensor], strides: Sequence[int], proposals: Sequence[torch.Tensor],
               targets: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """``loss_classifier``, ``loss_box_reg`` and ``loss_mask`` for a batch (see the module docstring)."""
        sampled = self._sample(proposals, targets)
        logits, deltas = self.box_head(self._pool(levels, strides, sampled.boxes, self.settings.box_pool))
        labels = torch.cat(sampled.labels)
        cls, box = box_loss(logits, deltas, labels, torch.cat(sampled.deltas), self.settings.box_loss_beta)
        fg_boxes, fg_targets, fg_labels = [], [], []
        for boxes, lab, matched, target in zip(sampled.boxes, sampled.labels, sampled.matched, targets, strict=True):
            fg = torch.where(lab > 0)[0]
            fg_boxes.append(boxes[fg])
            fg_labels.append(lab[fg])
            fg_targets.append(mask_targets(target["masks"], matched[fg], boxes[fg], 2 * self.settings.mask_pool))
        if sum(b.shape[0] for b in fg_boxes):
            mask_logits = self.mask_head(self._pool(levels, strides, fg_boxes, self.settings.mask_pool))
        else:  # keep the mask head in the graph with a zero loss
            mask_logits = self.mask_head(levels[0][:0, :, :1, :1].expand(0, -1, self.settings.mask_pool,
                                                                         self.settings.mask_pool))
        mask = mask_loss(mask_logits, torch.cat(fg_labels), torch.cat(fg_targets))
        return {"loss_classifier": cls, "loss_box_reg": box, "loss_mask": mask}

    def _sample(self, proposals: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]]) -> _Sampled:
        s = self.settings
        out = _Sampled([], [], [], [])
        for props, target in zip(proposals, targets, strict=True):
            gt_boxes, gt_labels = target["boxes"].to(props.dtype), target["labels"]
            props = torch.cat([props, gt_boxes])
            matched = match(gt_boxes, props, s.fg_iou, s.bg_iou, allow_low_quality=False)
            labels = torch.where(matched >= 0, gt_labels[matched.clamp(min=0)] if gt_labels.numel() else
                                 torch.zeros_like(matched), torch.zeros_like(matched))
            labels[(matched < 0) & (matched != BELOW)] = -1
            pos, neg = sample_balanced(labels, s.batch_per_image, s.positive_fraction)
            chosen = torch.cat([pos, neg])
            boxes, lab, m = props[chosen], labels[chosen], matched[chosen]
            deltas = torch.zeros_like(boxes)
            if pos.numel():
                deltas[: pos.numel()] = self.coder.encode(boxes[: pos.numel()], gt_boxes[m[: pos.numel()]])
            out.boxes.append(boxes)
            out.labels.append(lab)
            out.deltas.append(deltas)
            out.matched.append(m)
        return out

    def detect(self, levels: Sequence[torch.Tensor], strides: Sequence[int], proposals: Sequence[torch.Tensor],
               image_size: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
        """Per image ``boxes (D, 4)``, ``scores (D,)``, ``labels (D,)`` (1..classes-1) and
        ``mask_probs (D, 28, 28)`` (see the module docstring)."""
        s = self.settings
        logits, deltas = self.box_head(self._pool(levels, strides, proposals, s.box_pool))
        probs = torch.softmax(logits, dim=1)
        boxes_all = self.coder.decode(deltas, torch.cat(list(proposals)))
        results = []
        start = 0
        for props in proposals:
            k = props.shape[0]
            sl = slice(start, start + k)
            start += k
            boxes = clip_boxes(boxes_all[sl].reshape(k, -1, 4), image_size)[:, 1:].reshape(-1, 4)
            scores = probs[sl, 1:].reshape(-1)
            labels = torch.arange(1, self.num_classes, device=props.device).repeat(k)
            keep = torch.where(scores > s.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(boxes, s.min_size)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, s.nms_thresh)[: s.detections_per_image]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        detected = [r["boxes"] for r in results]
        if sum(b.shape[0] for b in detected):
            mask_logits = self.mask_head(self._pool(levels, strides, detected, s.mask_pool))
        else:
            size = 2 * s.mask_pool
            mask_logits = levels[0].new_zeros((0, self.num_classes, size, size))
        start = 0
        for r in results:
            d = r["boxes"].shape[0]
            chosen = mask_logits[start:start + d]
            start += d
            r["mask_probs"] = torch.sigmoid(chosen[torch.arange(d, device=chosen.device), r["labels"]])
        return results
