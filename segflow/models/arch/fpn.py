"""FPN: a feature-pyramid decoder (the semantic branch of Kirillov et al.'s Panoptic FPN, as in
segmentation_models_pytorch's ``FPN``) over a 4-stage encoder. 2D only; axis order ``(N, C, Y, X)``.

The encoder features at strides 4, 8, 16 and 32 each get a 1x1 lateral conv to ``pyramid_channels``;
top-down, each level adds the nearest-neighbour 2x upsampling of the level above. Every pyramid level
then goes through 3x3 conv-norm-ReLU layers of ``segmentation_channels``, each followed by a bilinear
2x upsampling until stride 4; the four maps are summed, dropped out (channel dropout), mapped to logits
by a 1x1 conv and upsampled bilinearly to the input size.

``encoder: builtin`` (the default) is a small ResNet-style encoder (``channels``, ``blocks``,
``stem_channels``); ``encoder: resnet18|resnet34|resnet50|vgg11`` takes that torchvision-layout trunk
(:mod:`segflow.models.arch.encoders`) and its features at strides 4 to 32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segflow.models.arch.base import ArchInfo, PaddedSegmenter
from segflow.models.arch.encoders import BUILTIN, build_encoder, check_encoder
from segflow.models.arch.layers import ConvNormAct, ResNetEncoder, conv_layer, dropout_layer, upsample_to
from segflow.models.arch.options import COMMON_DEFAULTS, check_common, check_fraction, check_int, check_int_tuple

__all__ = ["FPN", "INFO", "SegmentationBlock", "build"]

INFO = ArchInfo(
    name="fpn",
    spatial_dims=(2,),
    description="FPN: encoder features at stride 4..32, 1x1 laterals with a top-down pathway, per level "
    "3x3 conv + 2x bilinear upsampling to stride 4, summed, 1x1 head, bilinear to full size; total stride 32. "
    "encoder: builtin, or resnet18/34/50 or vgg11 (torchvision layout).",
    defaults={
        "encoder": BUILTIN,
        "channels": (16, 32, 64, 128),
        "blocks": (1, 1, 1, 1),
        "stem_channels": 16,
        "pyramid_channels": 64,
        "segmentation_channels": 32,
        "dropout": 0.1,
        **COMMON_DEFAULTS,
    },
)


class SegmentationBlock(nn.Sequential):
    """``max(1, upsamplings)`` 3x3 conv-norm-ReLU layers, each but a lone one followed by 2x bilinear upsampling."""

    def __init__(self, cin: int, cout: int, upsamplings: int, norm: str) -> None:
        layers: list[nn.Module] = [ConvNormAct(2, cin, cout, 3, norm=norm)]
        for i in range(upsamplings):
            if i > 0:
                layers.append(ConvNormAct(2, cout, cout, 3, norm=norm))
            layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        super().__init__(*layers)


class FPN(PaddedSegmenter):
    """FPN on ``(N, C, Y, X)``; returns logits of the input's spatial size."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        encoder: str = BUILTIN,
        channels: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (1, 1, 1, 1),
        stem_channels: int = 16,
        pyramid_channels: int = 64,
        segmentation_channels: int = 32,
        dropout: float = 0.1,
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
        self.laterals = nn.ModuleList(conv_layer(2, c, pyramid_channels, 1, bias=True) for c in channels)
        self.blocks = nn.ModuleList(
            SegmentationBlock(pyramid_channels, segmentation_channels, level, norm) for level in range(4)
        )
        self.head = nn.Sequential(
            dropout_layer(2, dropout), conv_layer(2, segmentation_channels, out_channels, 1, bias=True)
        )

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)[self.first:]
        level = self.laterals[3](features[3])
        merged = self.blocks[3](level)
        for i in (2, 1, 0):
            top_down = F.interpolate(level, size=features[i].shape[2:], mode="nearest")
            level = top_down + self.laterals[i](features[i])
            merged = merged + self.blocks[i](level)
        return upsample_to(self.head(merged), x.shape[2:])


def build(spatial_dims: int, in_channels: int, out_channels: int, options: dict[str, Any]) -> FPN:
    """FPN from validated options (see :data:`INFO` for the defaults)."""
    arch, d = "fpn", INFO.defaults
    kwargs: dict[str, Any] = {
        "encoder": check_encoder(arch, options, d, spatial_dims, ("channels", "blocks", "stem_channels")),
        "channels": check_int_tuple(arch, "channels", options["channels"], d["channels"], length=4),
        "blocks": check_int_tuple(arch, "blocks", options["blocks"], d["blocks"], length=4),
        "dropout": check_fraction(arch, "dropout", options["dropout"]),
    }
    for key in ("stem_channels", "pyramid_channels", "segmentation_channels"):
        kwargs[key] = check_int(arch, key, options[key])
    kwargs["norm"], kwargs["pad_mode"] = check_common(arch, options)
    return FPN(in_channels, out_channels, **kwargs)
