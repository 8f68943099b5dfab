"""Training targets: IoU matching, balanced sampling, mask targets.

Shared by the RPN (anchors vs ground truth, IoU >= 0.7 positive, < 0.3 negative, plus each ground
truth's best anchors) and the RoI heads (proposals vs ground truth, IoU >= 0.5 foreground, below
background). Sampling draws from torch's global generator, so ``torch.manual_seed`` makes a training
step deterministic.
"""

from __future__ import annotations

import torch

from segflow.models.maskrcnn.ops import box_iou, roi_align

__all__ = ["BELOW", "BETWEEN", "mask_targets", "match", "sample_balanced"]

#: match values: below the low threshold (negative / background), between thresholds (ignored)
BELOW = -1
BETWEEN = -2


def match(gt_boxes: torch.Tensor, boxes: torch.Tensor, high: float, low: float, allow_low_quality: bool
          ) -> torch.Tensor:
    """Index of the matched ground truth ``(K,)`` for each of ``boxes`` ``(K, 4)``, or :data:`BELOW` /
    :data:`BETWEEN`. IoU ``>= high`` matches the best ground truth; ``< low`` is negative; with
    ``allow_low_quality`` every box whose IoU with a ground truth equals that ground truth's best
    IoU (ties included, best > 0) is matched to it even below ``high`` (Faster R-CNN's RPN rule)."""
    k = boxes.shape[0]
    if gt_boxes.shape[0] == 0:
        return torch.full((k,), BELOW, dtype=torch.long, device=boxes.device)
    iou = box_iou(gt_boxes, boxes).nan_to_num(0.0)  # (G, K)
    best, matches = iou.max(dim=0)
    result = matches.clone()
    result[best < high] = BETWEEN
    result[best < low] = BELOW
    if allow_low_quality:
        best_per_gt = iou.max(dim=1, keepdim=True).values
        _, box_idx = torch.where((iou == best_per_gt) & (best_per_gt > 0))
        result[box_idx] = matches[box_idx]
    return result


def sample_balanced(labels: torch.Tensor, per_image: int, positive_fraction: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(positive, negative)`` of at most ``per_image`` entries of ``labels`` (``> 0``
    positive, ``== 0`` negative, ``< 0`` ignored), at most ``positive_fraction`` of them positive,
    the rest negative, drawn at random without replacement."""
    positive = torch.where(labels >= 1)[0]
    negative = torch.where(labels == 0)[0]
    n_pos = min(positive.numel(), int(per_image * positive_fraction))
    n_neg = min(negative.numel(), per_image - n_pos)
    pos = positive[torch.randperm(positive.numel(), device=labels.device)[:n_pos]]
    neg = negative[torch.randperm(negative.numel(), device=labels.device)[:n_neg]]
    return pos, neg


def mask_targets(gt_masks: torch.Tensor, matched: torch.Tensor, rois: torch.Tensor, size: int) -> torch.Tensor:
    """Binary ``(K, size, size)`` targets: ground-truth mask ``matched[k]`` (of ``gt_masks``
    ``(G, H, W)``) RoIAligned into ``rois[k]`` ``(K, 4)`` (aligned, adaptive sampling) and thresholded
    at 0.5 (Detectron2's rule; the paper's "intersection of the RoI and its ground-truth mask")."""
    if rois.shape[0] == 0:
        return gt_masks.new_zeros((0, size, size), dtype=torch.float32)
    indexed = torch.cat([matched[:, None].to(rois.dtype), rois], dim=1)
    soft = roi_align(gt_masks[:, None].float(), indexed.float(), size, 1.0, -1, True)[:, 0]
    return (soft >= 0.5).float()
