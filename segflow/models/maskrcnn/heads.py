"""RoI feature pooling over the FPN and the box and mask heads (He et al. 2017, FPN variant).

A RoI of width w and height h (input pixels) is pooled from level
``k = floor(k0 + log2(sqrt(w h) / canonical))`` (k0 = 4, canonical = 224, the FPN paper's rule),
clamped to the pooled levels (P2..P5), by :func:`~segflow.models.maskrcnn.ops.roi_align` (aligned,
``sampling_ratio`` 2 as torchvision's ``MultiScaleRoIAlign``). The box head is two fully connected
layers (``representation`` wide) then class logits and class-specific deltas; the mask head is four
3x3 convs, a 2x2 stride-2 deconvolution and a 1x1 conv to one mask per class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from segflow.models.maskrcnn.ops import roi_align

__all__ = ["BoxHead", "MaskHead", "level_of_rois", "pool_rois"]


def level_of_rois(boxes: torch.Tensor, k_min: int, k_max: int, canonical: float = 224.0, k0: int = 4,
                  eps: float = 1e-6) -> torch.Tensor:
    """FPN level index ``k`` (2 = P2) of each ``(K, 4)`` box, clamped to ``[k_min, k_max]``."""
    scale = torch.sqrt(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0))
    k = torch.floor(k0 + torch.log2(scale / canonical + eps))
    return k.clamp(k_min, k_max).long()


def pool_rois(levels: Sequence[torch.Tensor], strides: Sequence[int], boxes: Sequence[torch.Tensor],
              output_size: int, sampling_ratio: int = 2, canonical: float = 224.0) -> torch.Tensor:
    """``(sum K_i, C, output_size, output_size)`` features of the per-image ``boxes`` ``(K_i, 4)`` from
    the pyramid ``levels`` (P2..P5 at ``strides``), each RoI from its level (:func:`level_of_rois`)."""
    rois = torch.cat([torch.cat([torch.full((b.shape[0], 1), i, dtype=b.dtype, device=b.device), b], dim=1)
                      for i, b in enumerate(boxes)])
    k_min = round(math.log2(strides[0]))
    target = level_of_rois(rois[:, 1:], k_min, k_min + len(levels) - 1, canonical) - k_min
    first = levels[0]
    out = first.new_zeros((rois.shape[0], first.shape[1], output_size, output_size))
    for index, (feat, stride) in enumerate(zip(levels, strides, strict=True)):
        chosen = torch.where(target == index)[0]
        if chosen.numel():
            out[chosen] = roi_align(feat, rois[chosen], output_size, 1.0 / stride, sampling_ratio, True)
    return out


class BoxHead(nn.Module):
    """``forward(pooled (K, C, 7, 7))`` -> ``(class logits (K, classes), deltas (K, 4 classes))``."""

    def __init__(self, channels: int, pool: int, representation: int, num_classes: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(channels * pool * pool, representation)
        self.fc7 = nn.Linear(representation, representation)
        self.cls_score = nn.Linear(representation, num_classes)
        self.bbox_pred = nn.Linear(representation, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.relu(self.fc6(pooled.flatten(1)))
        x = torch.relu(self.fc7(x))
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """``forward(pooled (K, C, 14, 14))`` -> mask logits ``(K, classes, 28, 28)``."""

    def __init__(self, channels: int, width: int, num_convs: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for _ in range(num_convs):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=True)]
            cin = width
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(cin, width, 2, stride=2)
        self.logits = nn.Conv2d(width, num_classes, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)  # type: ignore[arg-type]
        nn.init.normal_(self.logits.weight, std=0.001)  # Detectron2's predictor init: logits start near 0

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.logits(torch.relu(self.deconv(self.convs(pooled))))
