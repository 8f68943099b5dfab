"""Region proposal network over the FPN levels (Ren et al. 2015; Lin et al. 2017).

A head shared by all levels (3x3 conv + ReLU, then 1x1 convs to ``A`` objectness logits and ``4 A``
deltas per cell) scores the anchors of :mod:`~segflow.models.maskrcnn.anchors`. Proposals: per image
and per level the ``pre_nms_top_n`` best anchors are decoded (weights (1, 1, 1, 1)), clipped, stripped
of boxes under ``min_size``, suppressed per level by NMS at ``nms_thresh``, and the ``post_nms_top_n``
best of the image are kept. Training samples ``batch_per_image`` anchors per image, up to
``positive_fraction`` positive (IoU >= 0.7, or the best anchor of a ground truth), negatives IoU < 0.3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from segflow.models.maskrcnn.anchors import grid_anchors
from segflow.models.maskrcnn.losses import rpn_losses
from segflow.models.maskrcnn.ops import BoxCoder, batched_nms, clip_boxes, remove_small_boxes
from segflow.models.maskrcnn.targets import BETWEEN, match, sample_balanced

__all__ = ["RPN", "RPNHead", "RPNSettings"]


@dataclass(frozen=True)
class RPNSettings:
    """RPN hyper-parameters; ``(train, eval)`` pairs for the top-k counts."""

    anchor_sizes: tuple[float, ...] = (16.0, 32.0, 64.0, 128.0, 256.0)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    pre_nms_top_n: tuple[int, int] = (2000, 1000)
    post_nms_top_n: tuple[int, int] = (2000, 1000)
    nms_thresh: float = 0.7
    fg_iou: float = 0.7
    bg_iou: float = 0.3
    batch_per_image: int = 256
    positive_fraction: float = 0.5
    min_size: float = 1e-3


class RPNHead(nn.Module):
    """``forward(levels)`` -> per level ``(objectness (N, A, H, W), deltas (N, 4 A, H, W))``."""

    def __init__(self, channels: int, anchors_per_cell: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(channels, anchors_per_cell, 1)
        self.bbox_pred = nn.Conv2d(channels, 4 * anchors_per_cell, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)  # type: ignore[arg-type]

    def forward(self, levels: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for feat in levels:
            t = torch.relu(self.conv(feat))
            out.append((self.cls_logits(t), self.bbox_pred(t)))
        return out


def _flatten(obj: torch.Tensor, deltas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, A, H, W)``, ``(N, 4A, H, W)`` -> ``(N, H*W*A)``, ``(N, H*W*A, 4)`` in anchor order."""
    n, a, h, w = obj.shape
    obj = obj.permute(0, 2, 3, 1).reshape(n, -1)
    deltas = deltas.reshape(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
    return obj, deltas


class RPN(nn.Module):
    """``forward(levels, image_size, strides, gt_boxes)`` -> ``(proposals per image (P_i, 4), losses)``;
    the losses (``loss_objectness``, ``loss_rpn_box``) only when ``gt_boxes`` is given (training)."""

    def __init__(self, channels: int, settings: RPNSettings) -> None:
        super().__init__()
        self.settings = settings
        self.head = RPNHead(channels, len(settings.aspect_ratios))
        self.coder = BoxCoder((1.0, 1.0, 1.0, 1.0))

    def forward(self, levels: Sequence[torch.Tensor], image_size: tuple[int, int], strides: Sequence[int],
                gt_boxes: Sequence[torch.Tensor] | None = None
                ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        s = self.settings
        sizes = [(f.shape[-2], f.shape[-1]) for f in levels]
        anchors = grid_anchors(sizes, strides, s.anchor_sizes, s.aspect_ratios, levels[0].device)
        flat = [_flatten(o, d) for o, d in self.head(levels)]
        objectness = torch.cat([o for o, _ in flat], dim=1)  # (N, total)
        deltas = torch.cat([d for _, d in flat], dim=1)  # (N, total, 4)
        all_anchors = torch.cat(anchors)
        level_of = torch.cat([torch.full((a.shape[0],), i, device=all_anchors.device)
                              for i, a in enumerate(anchors)])
        proposals = self._proposals(objectness.detach(), deltas.detach(), all_anchors, level_of,
                                    [a.shape[0] for a in anchors], image_size)
        losses: dict[str, torch.Tensor] = {}
        if gt_boxes is not None:
            losses = self._losses(objectness, deltas, all_anchors, gt_boxes)
        return proposals, losses

    def _proposals(self, objectness: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor,
                   level_of: torch.Tensor, counts: list[int], image_size: tuple[int, int]) -> list[torch.Tensor]:
        s = self.settings
        pre_n = s.pre_nms_top_n[0 if self.training else 1]
        post_n = s.post_nms_top_n[0 if self.training else 1]
        # per level top-k (indices into the concatenation)
        picks, start = [], 0
        for count in counts:
            k = min(pre_n, count)
            picks.append(objectness[:, start:start + count].topk(k, dim=1).indices + start)
            start += count
        pick = torch.cat(picks, dim=1)  # (N, sum k)
        out = []
        for i in range(objectness.shape[0]):
            idx = pick[i]
            boxes = clip_boxes(self.coder.decode(deltas[i, idx], anchors[idx]), image_size)
            scores, levels = objectness[i, idx], level_of[idx]
            keep = remove_small_boxes(boxes, s.min_size)
            boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
            keep = batched_nms(boxes, scores, levels, s.nms_thresh)[:post_n]
            out.append(boxes[keep])
        return out

    def _losses(self, objectness: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor,
                gt_boxes: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        s = self.settings
        logits, labels, pred, target = [], [], [], []
        for i, gt in enumerate(gt_boxes):
            matched = match(gt, anchors, s.fg_iou, s.bg_iou, allow_low_quality=True)
            lab = (matched >= 0).long()
            lab[matched == BETWEEN] = -1
            pos, neg = sample_balanced(lab, s.batch_per_image, s.positive_fraction)
            chosen = torch.cat([pos, neg])
            logits.append(objectness[i, chosen])
            labels.append(lab[chosen])
            pred.append(deltas[i, chosen])
            tgt = torch.zeros((chosen.numel(), 4), dtype=deltas.dtype, device=deltas.device)
            if pos.numel():
                tgt[: pos.numel()] = self.coder.encode(anchors[pos], gt[matched[pos]].to(deltas.dtype))
            target.append(tgt)
        obj, box = rpn_losses(torch.cat(logits), torch.cat(labels), torch.cat(pred), torch.cat(target))
        return {"loss_objectness": obj, "loss_rpn_box": box}
