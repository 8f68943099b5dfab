"""FCN-8s: VGG-like encoder, class scores at stride 32, 16 and 8 fused by upsampling and summation.

2D only; axis order ``(N, C, Y, X)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segflow.models.arch.base import ArchInfo, PaddedSegmenter
from segflow.models.arch.layers import ConvNormAct, conv_layer, dropout_layer, upsample_to
from segflow.models.arch.options import (
    COMMON_DEFAULTS,
    check_choice,
    check_common,
    check_fraction,
    check_int,
    check_int_tuple,
)

__all__ = ["INFO", "FCN8s", "bilinear_kernel", "build"]

INFO = ArchInfo(
    name="fcn8s",
    spatial_dims=(2,),
    description="FCN-8s: 5-stage VGG-like encoder, conv 'fc6/fc7', score layers at stride 32/16/8 "
    "summed after 2x upsampling, 8x upsampling to full size; total stride 32.",
    defaults={
        "channels": (16, 32, 64, 128, 128),
        "convs_per_stage": (2, 2, 3, 3, 3),
        "fc_channels": 128,
        "dropout": 0.1,
        "upsampling": "bilinear",
        **COMMON_DEFAULTS,
    },
)


def bilinear_kernel(channels: int, kernel: int) -> torch.Tensor:
    """Weights ``(channels, channels, k, k)`` making a transposed conv a per-channel bilinear upsampler."""
    factor = (kernel + 1) // 2
    center = factor - 1 if kernel % 2 == 1 else factor - 0.5
    ramp = 1 - (torch.arange(kernel, dtype=torch.float32) - center).abs() / factor
    weight = torch.zeros(channels, channels, kernel, kernel)
    for c in range(channels):
        weight[c, c] = ramp[:, None] * ramp[None, :]
    return weight


def _learned_up(channels: int, factor: int) -> nn.Module:
    layer = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, 2 * factor))
    return layer


class FCN8s(PaddedSegmenter):
    """FCN-8s on ``(N, C, Y, X)``; returns logits of the input's spatial size.

    ``upsampling="learned"`` uses transposed convs initialised as bilinear upsamplers,
    ``"bilinear"`` uses fixed bilinear interpolation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        channels: Sequence[int] = (16, 32, 64, 128, 128),
        convs_per_stage: Sequence[int] = (2, 2, 3, 3, 3),
        fc_channels: int = 128,
        dropout: float = 0.1,
        upsampling: str = "bilinear",
        norm: str = "batch",
        pad_mode: str = "replicate",
    ) -> None:
        super().__init__(2, in_channels, out_channels, 32, pad_mode)
        self.stages = nn.ModuleList()
        cin = in_channels
        for cout, count in zip(channels, convs_per_stage, strict=True):
            convs = [ConvNormAct(2, cin if i == 0 else cout, cout, norm=norm) for i in range(count)]
            self.stages.append(nn.Sequential(*convs, nn.MaxPool2d(2)))
            cin = cout
        self.fc = nn.Sequential(
            ConvNormAct(2, cin, fc_channels, 3, norm=norm),
            dropout_layer(2, dropout),
            ConvNormAct(2, fc_channels, fc_channels, 1, norm=norm),
            dropout_layer(2, dropout),
        )
        self.score32 = conv_layer(2, fc_channels, out_channels, 1, bias=True)
        self.score16 = conv_layer(2, channels[3], out_channels, 1, bias=True)
        self.score8 = conv_layer(2, channels[2], out_channels, 1, bias=True)
        self.learned = upsampling == "learned"
        if self.learned:
            self.up32 = _learned_up(out_channels, 2)
            self.up16 = _learned_up(out_channels, 2)
            self.up8 = _learned_up(out_channels, 8)

    def _up(self, name: str, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return getattr(self, name)(x) if self.learned else upsample_to(x, ref.shape[2:])

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []
        feat = x
        for stage in self.stages:
            feat = stage(feat)
            pooled.append(feat)
        score = self.score32(self.fc(pooled[4]))
        s16 = self.score16(pooled[3])
        score = self._up("up32", score, s16) + s16
        s8 = self.score8(pooled[2])
        score = self._up("up16", score, s8) + s8
        return self._up("up8", score, x)


def build(spatial_dims: int, in_channels: int, out_channels: int, options: dict[str, Any]) -> FCN8s:
    """FCN-8s from validated options (see :data:`INFO` for the defaults)."""
    arch, d = "fcn8s", INFO.defaults
    convs = options["convs_per_stage"]
    kwargs: dict[str, Any] = {
        "channels": check_int_tuple(arch, "channels", options["channels"], d["channels"], length=5),
        "convs_per_stage": check_int_tuple(arch, "convs_per_stage", convs, d["convs_per_stage"], length=5),
        "fc_channels": check_int(arch, "fc_channels", options["fc_channels"]),
        "dropout": check_fraction(arch, "dropout", options["dropout"]),
        "upsampling": check_choice(arch, "upsampling", options["upsampling"], ("bilinear", "learned")),
    }
    kwargs["norm"], kwargs["pad_mode"] = check_common(arch, options)
    return FCN8s(in_channels, out_channels, **kwargs)
