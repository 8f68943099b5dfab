"""U-Net: encoder–decoder with skip connections (2D ``(N, C, Y, X)`` and 3D ``(N, C, Z, Y, X)``).

``encoder: builtin`` (the default) is the classic double-conv encoder whose widths are ``channels``.
``encoder: resnet18|resnet34|resnet50|vgg11`` (2D) takes a torchvision-layout trunk
(:mod:`segflow.models.arch.encoders`; ``vgg11`` gives TernausNet-11) and a decoder of five 2x
transposed-conv steps (stride 32 to 1) of widths ``decoder_channels``, each concatenating the
encoder feature at its stride (when the trunk has one) before a double conv.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segflow.models.arch.base import ArchInfo, PaddedSegmenter
from segflow.models.arch.encoders import BUILTIN, build_encoder, check_encoder
from segflow.models.arch.layers import ConvNormAct, conv_layer, dropout_layer, maxpool_layer, transpose_layer
from segflow.models.arch.options import COMMON_DEFAULTS, check_common, check_fraction, check_int_tuple

__all__ = ["INFO", "EncoderUNet", "UNet", "build"]

INFO = ArchInfo(
    name="unet",
    spatial_dims=(2, 3),
    description="U-Net: double-conv encoder with max-pooling, transposed-conv decoder with "
    "concatenated skip connections; total stride 2**(len(channels)-1). With encoder resnet18/34/50 or "
    "vgg11 (2D): that torchvision-layout encoder, decoder widths decoder_channels, total stride 32.",
    defaults={
        "channels": (16, 32, 64, 128),
        "dropout": 0.0,
        "encoder": BUILTIN,
        "decoder_channels": (256, 128, 64, 32, 16),
        **COMMON_DEFAULTS,
    },
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


class EncoderUNet(PaddedSegmenter):
    """U-Net on ``(N, C, Y, X)`` with a torchvision-layout encoder; logits of the input's size.

    ``decoder_channels[j]`` is the width after the ``j``-th 2x upsampling (strides 16, 8, 4, 2, 1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        encoder: str,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        dropout: float = 0.0,
        norm: str = "batch",
        pad_mode: str = "replicate",
    ) -> None:
        super().__init__(2, in_channels, out_channels, 32, pad_mode)
        self.encoder = build_encoder(encoder, in_channels)
        reductions = self.encoder.reductions
        self.skips = [reductions.index(16 >> j) if (16 >> j) in reductions else -1 for j in range(5)]
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        cin = self.encoder.channels[-1]
        for width, skip in zip(decoder_channels, self.skips, strict=True):
            extra = self.encoder.channels[skip] if skip >= 0 else 0
            self.ups.append(transpose_layer(2, cin, width, 2, 2, bias=True))
            self.decoders.append(DoubleConv(2, width + extra, width, dropout, norm))
            cin = width
        self.head = conv_layer(2, cin, out_channels, 1, bias=True)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        y = features[-1]
        for up, decoder, skip in zip(self.ups, self.decoders, self.skips, strict=True):
            y = up(y)
            y = decoder(torch.cat([y, features[skip]], dim=1) if skip >= 0 else y)
        return self.head(y)


def build(spatial_dims: int, in_channels: int, out_channels: int, options: dict[str, Any]) -> UNet | EncoderUNet:
    """U-Net from validated options (see :data:`INFO` for the defaults)."""
    d = INFO.defaults
    encoder = check_encoder("unet", options, d, spatial_dims, ("channels",), ("decoder_channels",))
    dropout = check_fraction("unet", "dropout", options["dropout"])
    norm, pad_mode = check_common("unet", options)
    if encoder != BUILTIN:
        decoder = check_int_tuple("unet", "decoder_channels", options["decoder_channels"], d["decoder_channels"],
                                  length=5)
        return EncoderUNet(in_channels, out_channels, encoder=encoder, decoder_channels=decoder, dropout=dropout,
                           norm=norm, pad_mode=pad_mode)
    channels = check_int_tuple("unet", "channels", options["channels"], d["channels"], min_length=2)
    return UNet(
        spatial_dims,
        in_channels,
        out_channels,
        channels=channels,
        dropout=dropout,
        norm=norm,
        pad_mode=pad_mode,
    )
