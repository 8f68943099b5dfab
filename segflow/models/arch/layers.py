"""Dimension-generic layers shared by the architectures (2D: ``(N, C, Y, X)``, 3D: ``(N, C, Z, Y, X)``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BasicBlock",
    "ConvNormAct",
    "ResNetEncoder",
    "conv_layer",
    "dilation_schedule",
    "dropout_layer",
    "group_count",
    "maxpool_layer",
    "norm_layer",
    "transpose_layer",
    "upsample_to",
]

_CONV: dict[int, type[nn.Module]] = {2: nn.Conv2d, 3: nn.Conv3d}
_BATCH: dict[int, type[nn.Module]] = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_DROPOUT: dict[int, type[nn.Module]] = {2: nn.Dropout2d, 3: nn.Dropout3d}
_MAXPOOL: dict[int, type[nn.Module]] = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_TRANSPOSE: dict[int, type[nn.Module]] = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def conv_layer(
    dims: int, cin: int, cout: int, kernel: int = 3, *, stride: int = 1, dilation: int = 1, bias: bool = False
) -> nn.Module:
    """``Conv{dims}d`` with 'same' padding (for odd kernels) before striding."""
    padding = dilation * (kernel - 1) // 2
    return _CONV[dims](cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)


def transpose_layer(
    dims: int,
    cin: int,
    cout: int,
    kernel: int,
    stride: int,
    padding: int = 0,
    output_padding: int = 0,
    bias: bool = False,
) -> nn.Module:
    """``ConvTranspose{dims}d``."""
    return _TRANSPOSE[dims](
        cin, cout, kernel, stride=stride, padding=padding, output_padding=output_padding, bias=bias
    )


def maxpool_layer(
    dims: int, kernel: int = 2, stride: int = 2, padding: int = 0, return_indices: bool = False
) -> nn.Module:
    """``MaxPool{dims}d``."""
    return _MAXPOOL[dims](kernel, stride=stride, padding=padding, return_indices=return_indices)


def group_count(channels: int) -> int:
    """Most groups (<= 8) dividing ``channels`` with at least 2 channels each (1 for 1 channel).

    Two channels per group keep GroupNorm defined on 1-voxel bottlenecks.
    """
    return max([g for g in range(1, 9) if channels % g == 0 and channels // g >= 2], default=1)


def norm_layer(dims: int, kind: str, channels: int) -> nn.Module:
    """Normalisation by name: ``batch``, ``group`` (see :func:`group_count`) or ``none``.

    Instance norm is not offered: it is undefined on the 1-voxel bottleneck of small inputs.
    """
    if kind == "batch":
        return _BATCH[dims](channels)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    return nn.Identity()


def dropout_layer(dims: int, p: float) -> nn.Module:
    """Channel dropout (``Dropout{dims}d``), or identity for ``p == 0``."""
    return _DROPOUT[dims](p) if p > 0 else nn.Identity()


class ConvNormAct(nn.Sequential):
    """Conv → norm → ReLU; the conv has a bias only when ``norm == "none"``."""

    def __init__(
        self,
        dims: int,
        cin: int,
        cout: int,
        kernel: int = 3,
        *,
        stride: int = 1,
        dilation: int = 1,
        norm: str = "batch",
    ) -> None:
        super().__init__(
            conv_layer(dims, cin, cout, kernel, stride=stride, dilation=dilation, bias=norm == "none"),
            norm_layer(dims, norm, cout),
            nn.ReLU(inplace=True),
        )


def upsample_to(x: torch.Tensor, size: Sequence[Any]) -> torch.Tensor:
    """(Bi/tri)linear resize of ``(N, C, *spatial)`` to ``size`` (taken from a tensor's shape)."""
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return F.interpolate(x, size=list(size), mode=mode, align_corners=False)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs, identity or 1x1 projection shortcut), optionally dilated."""

    def __init__(
        self, dims: int, cin: int, cout: int, *, stride: int = 1, dilation: int = 1, norm: str = "batch"
    ) -> None:
        super().__init__()
        self.conv1 = conv_layer(dims, cin, cout, 3, stride=stride, dilation=dilation, bias=norm == "none")
        self.norm1 = norm_layer(dims, norm, cout)
        self.conv2 = conv_layer(dims, cout, cout, 3, dilation=dilation, bias=norm == "none")
        self.norm2 = norm_layer(dims, norm, cout)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                conv_layer(dims, cin, cout, 1, stride=stride, bias=norm == "none"),
                norm_layer(dims, norm, cout),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + self.shortcut(x))


def dilation_schedule(output_stride: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-stage (strides, dilations) of a 4-stage ResNet for output stride 8, 16 or 32."""
    if output_stride == 8:
        return (1, 2, 1, 1), (1, 1, 2, 4)
    if output_stride == 16:
        return (1, 2, 2, 1), (1, 1, 1, 2)
    return (1, 2, 2, 2), (1, 1, 1, 1)


class ResNetEncoder(nn.Module):
    """Residual encoder: stem (3x3 conv stride 2, 3x3 conv, 3x3 max-pool stride 2) and 4 stages.

    ``forward`` returns the 4 stage outputs; the first is at stride 4, the last at
    ``output_stride`` (8 and 16 replace the striding of the last stages by dilation).
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        stem_channels: int,
        channels: Sequence[int],
        blocks: Sequence[int],
        *,
        output_stride: int = 32,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            ConvNormAct(dims, in_channels, stem_channels, 3, stride=2, norm=norm),
            ConvNormAct(dims, stem_channels, stem_channels, 3, norm=norm),
            maxpool_layer(dims, 3, 2, 1),
        )
        strides, dilations = dilation_schedule(output_stride)
        stages: list[nn.Module] = []
        cin = stem_channels
        for cout, count, stride, dilation in zip(channels, blocks, strides, dilations, strict=True):
            layers = [
                BasicBlock(
                    dims,
                    cin if i == 0 else cout,
                    cout,
                    stride=stride if i == 0 else 1,
                    dilation=dilation,
                    norm=norm,
                )
                for i in range(count)
            ]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage features for ``(N, C, *spatial)`` input, shallowest first."""
        features = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
