"""DeepLabV3+: dilated residual encoder, ASPP, low-level-skip decoder (2D and 3D).

Axis order: ``(N, C, Y, X)`` in 2D, ``(N, C, Z, Y, X)`` in 3D. ``encoder: builtin`` (the default) is a
small ResNet-style encoder (``channels``, ``blocks``, ``stem_channels``; 2D and 3D); ``encoder:
resnet18|resnet34|resnet50|vgg11`` (2D) takes that torchvision-layout trunk
(:mod:`segflow.models.arch.encoders`) dilated to ``output_stride``, its stride-4 feature feeding the
decoder and its deepest one the ASPP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segflow.models.arch.base import ArchInfo, PaddedSegmenter
from segflow.models.arch.encoders import BUILTIN, build_encoder, check_encoder
from segflow.models.arch.layers import ConvNormAct, ResNetEncoder, conv_layer, dropout_layer, upsample_to
from segflow.models.arch.options import (
    COMMON_DEFAULTS,
    check_choice,
    check_common,
    check_fraction,
    check_int,
    check_int_tuple,
)

__all__ = ["ASPP", "INFO", "DeepLabV3Plus", "build"]

INFO = ArchInfo(
    name="deeplabv3plus",
    spatial_dims=(2, 3),
    description="DeepLabV3+: ResNet-style encoder with atrous last stages (output_stride 16 or 8), "
    "ASPP with image pooling, decoder fusing the stride-4 feature; total stride output_stride. encoder: "
    "builtin, or resnet18/34/50 or vgg11 (2D, torchvision layout).",
    defaults={
        "channels": (16, 32, 64, 128),
        "blocks": (1, 1, 2, 1),
        "stem_channels": 16,
        "output_stride": 16,
        "atrous_rates": (6, 12, 18),
        "aspp_channels": 64,
        "low_level_channels": 16,
        "decoder_channels": 64,
        "dropout": 0.1,
        "encoder": BUILTIN,
        **COMMON_DEFAULTS,
    },
)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1 conv, 3x3 atrous convs, image pooling; 1x1 projection.

    The image-pooling branch (global mean → 1x1 conv with bias → ReLU → broadcast) has no
    normalisation, so batch size 1 works in train mode.
    """

    def __init__(
        self, dims: int, cin: int, cout: int, rates: Sequence[int], dropout: float, norm: str
    ) -> None:
        super().__init__()
        branches = [ConvNormAct(dims, cin, cout, 1, norm=norm)]
        branches += [ConvNormAct(dims, cin, cout, 3, dilation=rate, norm=norm) for rate in rates]
        self.branches = nn.ModuleList(branches)
        self.pooling = nn.Sequential(conv_layer(dims, cin, cout, 1, bias=True), nn.ReLU(inplace=True))
        self.project = nn.Sequential(
            ConvNormAct(dims, (len(rates) + 2) * cout, cout, 1, norm=norm), dropout_layer(dims, dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = list(range(2, x.dim()))
        feats = [branch(x) for branch in self.branches]
        pooled = self.pooling(x.mean(dim=spatial, keepdim=True))
        feats.append(upsample_to(pooled, x.shape[2:]))
        return self.project(torch.cat(feats, dim=1))


class DeepLabV3Plus(PaddedSegmenter):
    """DeepLabV3+ on ``(N, C, Y, X)`` or ``(N, C, Z, Y, X)``; returns logits of the input's size.

    ``atrous_rates`` are given for output stride 16 and doubled for output stride 8.
    The built-in ``self.encoder(x)`` returns the 4 stage features (stride 4, 8, then ``output_stride``);
    a torchvision trunk returns its stage features (:mod:`segflow.models.arch.encoders`), the one at
    stride 4 being ``features[self.low]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        channels: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (1, 1, 2, 1),
        stem_channels: int = 16,
        output_stride: int = 16,
        atrous_rates: Sequence[int] = (6, 12, 18),
        aspp_channels: int = 64,
        low_level_channels: int = 16,
        decoder_channels: int = 64,
        dropout: float = 0.1,
        encoder: str = BUILTIN,
        norm: str = "batch",
        pad_mode: str = "replicate",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, output_stride, pad_mode)
        dims = spatial_dims
        self.output_stride = output_stride
        self.low = 0  # index of the stride-4 feature in the encoder's output
        if encoder == BUILTIN:
            self.encoder: nn.Module = ResNetEncoder(
                dims, in_channels, stem_channels, channels, blocks, output_stride=output_stride, norm=norm
            )
        else:
            trunk = build_encoder(encoder, in_channels, output_stride=output_stride)
            self.encoder, self.low = trunk, trunk.reductions.index(4)
            channels = (trunk.channels[self.low], trunk.channels[-1])
        rates = [rate * 16 // output_stride for rate in atrous_rates]
        self.aspp = ASPP(dims, channels[-1], aspp_channels, rates, dropout, norm)
        self.reduce = ConvNormAct(dims, channels[0], low_level_channels, 1, norm=norm)
        self.decoder = nn.Sequential(
            ConvNormAct(dims, aspp_channels + low_level_channels, decoder_channels, 3, norm=norm),
            ConvNormAct(dims, decoder_channels, decoder_channels, 3, norm=norm),
            conv_layer(dims, decoder_channels, out_channels, 1, bias=True),
        )

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        low = self.reduce(features[self.low])
        high = upsample_to(self.aspp(features[-1]), low.shape[2:])
        logits = self.decoder(torch.cat([high, low], dim=1))
        return upsample_to(logits, x.shape[2:])


def build(spatial_dims: int, in_channels: int, out_channels: int, options: dict[str, Any]) -> DeepLabV3Plus:
    """DeepLabV3+ from validated options (see :data:`INFO` for the defaults)."""
    arch, d = "deeplabv3plus", INFO.defaults
    kwargs: dict[str, Any] = {
        "encoder": check_encoder(arch, options, d, spatial_dims, ("channels", "blocks", "stem_channels")),
        "channels": check_int_tuple(arch, "channels", options["channels"], d["channels"], length=4),
        "blocks": check_int_tuple(arch, "blocks", options["blocks"], d["blocks"], length=4),
        "atrous_rates": check_int_tuple(arch, "atrous_rates", options["atrous_rates"], d["atrous_rates"]),
        "output_stride": check_choice(arch, "output_stride", options["output_stride"], (16, 8)),
        "dropout": check_fraction(arch, "dropout", options["dropout"]),
    }
    for key in ("stem_channels", "aspp_channels", "low_level_channels", "decoder_channels"):
        kwargs[key] = check_int(arch, key, options[key])
    kwargs["norm"], kwargs["pad_mode"] = check_common(arch, options)
    return DeepLabV3Plus(spatial_dims, in_channels, out_channels, **kwargs)
