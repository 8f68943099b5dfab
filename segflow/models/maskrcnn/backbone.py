"""ResNet-FPN backbone of Mask R-CNN: pyramid levels P2..P6 (Lin et al. 2017; He et al. 2017).

The trunk is :class:`segflow.models.arch.encoders.ResNetTrunk` (torchvision's layout, so ImageNet
weights can load into ``backbone.body``). C2..C5 (strides 4..32) get 1x1 lateral convs to ``width``
channels; top-down, each level adds the nearest-neighbour 2x upsampling of the level above; a 3x3
conv smooths each sum. P6 is P5 subsampled by a stride-2 max-pool of kernel 1, as in the paper's
FPN RPN (used by the RPN only). Axis order ``(N, C, Y, X)``; inputs must be multiples of 32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segflow.models.arch.encoders import ResNetTrunk, build_encoder

__all__ = ["FPN_STRIDES", "ResNetFPN"]

FPN_STRIDES = (4, 8, 16, 32, 64)


class ResNetFPN(nn.Module):
    """``forward(x)`` -> ``[P2, P3, P4, P5, P6]``, each ``(N, width, Y / s, X / s)`` for s in
    :data:`FPN_STRIDES`."""

    def __init__(self, depth: str = "resnet18", in_channels: int = 3, width: int = 64, trunk_width: int = 64
                 ) -> None:
        super().__init__()
        body = build_encoder(depth, in_channels, base_width=trunk_width)
        assert isinstance(body, ResNetTrunk)
        self.body = body
        self.width = width
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in body.channels[1:])
        self.output = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in body.channels[1:])
        for module in [*self.lateral, *self.output]:
            assert isinstance(module, nn.Conv2d)
            nn.init.kaiming_uniform_(module.weight, a=1)
            nn.init.zeros_(module.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c2, c3, c4, c5 = self.body(x)[1:]
        inner = self.lateral[3](c5)
        results = [self.output[3](inner)]
        for level, feat in ((2, c4), (1, c3), (0, c2)):
            inner = self.lateral[level](feat) + F.interpolate(inner, size=feat.shape[-2:], mode="nearest")
            results.insert(0, self.output[level](inner))
        results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2))
        return results
