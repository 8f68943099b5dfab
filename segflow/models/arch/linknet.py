"""LinkNet: residual encoder; decoder block outputs are added to the encoder skip features.

2D only; axis order ``(N, C, Y, X)``. ``encoder: builtin`` (the default) is a small ResNet-style encoder
(``channels``, ``blocks``, ``stem_channels``); ``encoder: resnet18|resnet34|resnet50|vgg11`` takes that
torchvision-layout trunk (:mod:`segflow.models.arch.encoders`; ``resnet34`` gives LinkNet-34) and its
features at strides 4, 8, 16 and 32, the decoder widths following the trunk's channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segflow.models.arch.base import ArchInfo, PaddedSegmenter
from segflow.models.arch.encoders import BUILTIN, build_encoder, check_encoder
from segflow.models.arch.layers import ConvNormAct, ResNetEncoder, norm_layer, transpose_layer
from segflow.models.arch.options import COMMON_DEFAULTS, check_common, check_int, check_int_tuple

__all__ = ["INFO", "LinkNet", "build"]

INFO = ArchInfo(
    name="linknet",
    spatial_dims=(2,),
    description="LinkNet: ResNet-style encoder (stride 4..32), decoder blocks (1x1, 2x transposed "
    "conv, 1x1) whose outputs are added to the encoder features; total stride 32. encoder: builtin, or "
    "resnet18/34/50 or vgg11 (torchvision layout).",
    defaults={
        "channels": (16, 32, 64, 128),
        "blocks": (1, 1, 1, 1),
        "stem_channels": 16,
        "encoder": BUILTIN,
        **COMMON_DEFAULTS,
    },
)


def _up_layer(cin: int, cout: int, norm: str) -> nn.Sequential:
    """3x3 transposed conv doubling the size exactly, then norm and ReLU."""
    up = transpose_layer(2, cin, cout, 3, 2, padding=1, output_padding=1, bias=norm == "none")
    return nn.Sequential(up, norm_layer(2, norm, cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Sequential):
    """1x1 conv (to cin/4) → 2x transposed conv (or 3x3 conv when ``upsample`` is False) → 1x1 conv."""

    def __init__(self, cin: int, cout: int, *, upsample: bool, norm: str) -> None:
        mid = max(2, cin // 4)
        middle = _up_layer(mid, mid, norm) if upsample else ConvNormAct(2, mid, mid, 3, norm=norm)
        super().__init__(
            ConvNormAct(2, cin, mid, 1, norm=norm), middle, ConvNormAct(2, mid, cout, 1, norm=norm)
        )


class LinkNet(PaddedSegmenter):
    """LinkNet on ``(N, C, Y, X)``; returns logits of the input's spatial size."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        channels: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (1, 1, 1, 1),
        stem_channels: int = 16,
        encoder: str = BUILTIN,
        norm: str = "batch",
        pad_mode: str = "replicate",
    ) -> None:
        super().__init__(2, in_channels, out_channels, 32, pad_mode)
        self.first = 0  # index of the stride-4 feature in the encoder's output
        if encoder == BUILTIN:
            self.encoder: nn.Module = ResNetEncoder(2, in_channels, stem_channels, channels, blocks, norm=norm)
        else:
            trunk = build_encoder(encoder, in_channels)
            self.encoder, self.first, channels = trunk, trunk.reductions.index(4), trunk.channels[-4:]
        self.decoders = nn.ModuleList(
            DecoderBlock(channels[i], channels[i - 1] if i > 0 else channels[0], upsample=i > 0, norm=norm)
            for i in range(len(channels) - 1, -1, -1)
        )
        half = max(1, channels[0] // 2)
        self.head = nn.Sequential(
            _up_layer(channels[0], half, norm),
            ConvNormAct(2, half, half, 3, norm=norm),
            transpose_layer(2, half, out_channels, 2, 2, bias=True),
        )

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)[self.first:]
        y = features[-1]
        for i, decoder in enumerate(self.decoders):
            y = decoder(y)
            skip = len(features) - 2 - i
            if skip >= 0:
                y = y + features[skip]
        return self.head(y)


def build(spatial_dims: int, in_channels: int, out_channels: int, options: dict[str, Any]) -> LinkNet:
    """LinkNet from validated options (see :data:`INFO` for the defaults)."""
    arch, d = "linknet", INFO.defaults
    encoder = check_encoder(arch, options, d, spatial_dims, ("channels", "blocks", "stem_channels"))
    channels = check_int_tuple(arch, "channels", options["channels"], d["channels"], length=4)
    blocks = check_int_tuple(arch, "blocks", options["blocks"], d["blocks"], length=4)
    stem = check_int(arch, "stem_channels", options["stem_channels"])
    norm, pad_mode = check_common(arch, options)
    return LinkNet(
        in_channels,
        out_channels,
        channels=channels,
        blocks=blocks,
        stem_channels=stem,
        encoder=encoder,
        norm=norm,
        pad_mode=pad_mode,
    )
