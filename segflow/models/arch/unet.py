"""U-Net: encoder–decoder with skip connections (2D ``(N, C, Y, X)`` and 3D ``(N, C, Z, Y, X)``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segflow.models.arch.base import ArchInfo, PaddedSegmenter
from segflow.models.arch.layers import ConvNormAct, conv_layer, dropout_layer, maxpool_layer, transpose_layer
from segflow.models.arch.options import COMMON_DEFAULTS, check_common, check_fraction, check_int_tuple

__all__ = ["INFO", "UNet", "build"]

INFO = ArchInfo(
    name="unet",
    spatial_dims=(2, 3),
    description="U-Net: double-conv encoder with max-pooling, transposed-conv decoder with "
    "concatenated skip connections; total stride 2**(len(channels)-1).",
    defaults={"channels": (16, 32, 64, 128), "dropout": 0.0, **COMMON_DEFAULTS},
)


class DoubleConv(nn.Sequential):
    """Two 3x3 conv-norm-ReLU layers with optional channel dropout between them."""

    def __init__(self, dims: int, cin: int, cout: int, dropout: float, norm: str) -> None:
        super().__init__(
            ConvNormAct(dims, cin, cout, norm=norm),
            dropout_layer(dims, dropout),
            ConvNormAct(dims, cout, cout, norm=norm),
        )


class UNet(PaddedSegmenter):
    """U-Net on ``(N, C, Y, X)`` or ``(N, C, Z, Y, X)``; returns logits of the same spatial size.

    ``channels[i]`` is the width at stride ``2**i``; the deepest entry is the bottleneck.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        channels: Sequence[int] = (16, 32, 64, 128),
        dropout: float = 0.0,
        norm: str = "batch",
        pad_mode: str = "replicate",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, 2 ** (len(channels) - 1), pad_mode)
        dims = spatial_dims
        self.encoders = nn.ModuleList()
        cin = in_channels
        for cout in channels:
            self.encoders.append(DoubleConv(dims, cin, cout, dropout, norm))
            cin = cout
        self.pool = maxpool_layer(dims)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for deep, shallow in zip(channels[:0:-1], channels[-2::-1], strict=True):
            self.ups.append(transpose_layer(dims, deep, shallow, 2, 2, bias=True))
            self.decoders.append(DoubleConv(dims, 2 * shallow, shallow, dropout, norm))
        self.head = conv_layer(dims, channels[0], out_channels, 1, bias=True)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, decoder in zip(self.ups, self.decoders, strict=True):
            x = decoder(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def build(spatial_dims: int, in_channels: int, out_channels: int, options: dict[str, Any]) -> UNet:
    """U-Net from validated options (see :data:`INFO` for the defaults)."""
    channels = check_int_tuple(
        "unet", "channels", options["channels"], INFO.defaults["channels"], min_length=2
    )
    dropout = check_fraction("unet", "dropout", options["dropout"])
    norm, pad_mode = check_common("unet", options)
    return UNet(
        spatial_dims,
        in_channels,
        out_channels,
        channels=channels,
        dropout=dropout,
        norm=norm,
        pad_mode=pad_mode,
    )
