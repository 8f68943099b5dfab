"""PSPNet: dilated residual backbone, pyramid pooling module, head upsampled to full size.

2D only; axis order ``(N, C, Y, X)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segflow.models.arch.base import ArchInfo, PaddedSegmenter
from segflow.models.arch.layers import ConvNormAct, ResNetEncoder, conv_layer, dropout_layer, upsample_to
from segflow.models.arch.options import (
    COMMON_DEFAULTS,
    check_choice,
    check_common,
    check_fraction,
    check_int,
    check_int_tuple,
)

__all__ = ["INFO", "AdaptiveAvgPool", "PSPNet", "PyramidPooling", "build"]

INFO = ArchInfo(
    name="pspnet",
    spatial_dims=(2,),
    description="PSPNet: ResNet-style encoder dilated to output_stride 8 (or 16), pyramid pooling "
    "(adaptive average pools at `bins`, 1x1 conv each, upsampled, concatenated), 3x3 head; "
    "total stride output_stride.",
    defaults={
        "channels": (16, 32, 64, 128),
        "blocks": (1, 1, 1, 1),
        "stem_channels": 16,
        "output_stride": 8,
        "bins": (1, 2, 3, 6),
        "pool_channels": 32,
        "head_channels": 64,
        "dropout": 0.1,
        **COMMON_DEFAULTS,
    },
)


def _bin_matrix(size: Any, bins: int, like: torch.Tensor) -> torch.Tensor:
    """``(bins, size)`` matrix averaging the same index ranges as ``adaptive_avg_pool``."""
    index = torch.arange(bins, device=like.device)
    start = torch.div(index * size, bins, rounding_mode="floor")
    end = torch.div((index + 1) * size + bins - 1, bins, rounding_mode="floor")
    pos = torch.arange(size, device=like.device)
    mask = ((pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])).to(like.dtype)
    return mask / mask.sum(dim=1, keepdim=True)


class AdaptiveAvgPool(nn.Module):
    """Adaptive average pooling of ``(N, C, Y, X)`` to ``(N, C, bins, bins)`` as two matrix products.

    Equal to ``nn.AdaptiveAvgPool2d(bins)``, but the bin layout is computed from the input's shape
    in traced ops, so ``torch.jit.trace`` and the ONNX export stay valid at every input size
    (the ONNX exporter cannot export ``adaptive_avg_pool2d`` with dynamic sizes).
    """

    def __init__(self, bins: int) -> None:
        super().__init__()
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _bin_matrix(x.shape[2], self.bins, x)
        cols = _bin_matrix(x.shape[3], self.bins, x)
        return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


class PyramidPooling(nn.Module):
    """Concatenate the input with, per bin, adaptive-avg-pool → 1x1 conv (bias, ReLU) → upsample.

    The pooled branches carry no normalisation, so batch size 1 works in train mode.
    """

    def __init__(self, cin: int, cout: int, bins: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool(b), conv_layer(2, cin, cout, 1, bias=True), nn.ReLU(inplace=True))
            for b in bins
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [upsample_to(branch(x), x.shape[2:]) for branch in self.branches]
        return torch.cat([x, *pooled], dim=1)


class PSPNet(PaddedSegmenter):
    """PSPNet on ``(N, C, Y, X)``; returns logits of the input's spatial size."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        channels: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (1, 1, 1, 1),
        stem_channels: int = 16,
        output_stride: int = 8,
        bins: Sequence[int] = (1, 2, 3, 6),
        pool_channels: int = 32,
        head_channels: int = 64,
        dropout: float = 0.1,
        norm: str = "batch",
        pad_mode: str = "replicate",
    ) -> None:
        super().__init__(2, in_channels, out_channels, output_stride, pad_mode)
        self.encoder = ResNetEncoder(
            2, in_channels, stem_channels, channels, blocks, output_stride=output_stride, norm=norm
        )
        self.ppm = PyramidPooling(channels[-1], pool_channels, bins)
        self.head = nn.Sequential(
            ConvNormAct(2, channels[-1] + len(bins) * pool_channels, head_channels, 3, norm=norm),
            dropout_layer(2, dropout),
            conv_layer(2, head_channels, out_channels, 1, bias=True),
        )

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.ppm(self.encoder(x)[-1]))
        return upsample_to(logits, x.shape[2:])


def build(spatial_dims: int, in_channels: int, out_channels: int, options: dict[str, Any]) -> PSPNet:
    """PSPNet from validated options (see :data:`INFO` for the defaults)."""
    arch, d = "pspnet", INFO.defaults
    kwargs: dict[str, Any] = {
        "channels": check_int_tuple(arch, "channels", options["channels"], d["channels"], length=4),
        "blocks": check_int_tuple(arch, "blocks", options["blocks"], d["blocks"], length=4),
        "bins": check_int_tuple(arch, "bins", options["bins"], d["bins"]),
        "output_stride": check_choice(arch, "output_stride", options["output_stride"], (8, 16)),
        "dropout": check_fraction(arch, "dropout", options["dropout"]),
    }
    for key in ("stem_channels", "pool_channels", "head_channels"):
        kwargs[key] = check_int(arch, key, options[key])
    kwargs["norm"], kwargs["pad_mode"] = check_common(arch, options)
    return PSPNet(in_channels, out_channels, **kwargs)
