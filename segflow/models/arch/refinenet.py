"""RefineNet (Lin et al. 2017, "RefineNet: Multi-Path Refinement Networks"), 4-cascaded.

2D only; axis order ``(N, C, Y, X)``. A residual encoder (:class:`ResNetEncoder`: stem to 1/4 and
four stages at 1/4, 1/8, 1/16, 1/32) feeds four RefineNet blocks, cascaded from 1/32 to 1/4.
RefineNet-m (m = 4 at 1/32 .. 1 at 1/4) takes the encoder features of its resolution, reduced to
``refine_channels[m-1]`` by a 3x3 conv (the reference implementation's "dimred" conv), and the
output of RefineNet-(m+1). Inside a block, as in the paper:

- every input path goes through two residual conv units (RCU: ReLU, 3x3 conv, ReLU, 3x3 conv,
  plus the identity; no normalisation);
- multi-resolution fusion: a 3x3 conv per path to the block's channels, bilinear upsampling to the
  largest input, sum (skipped for RefineNet-4, which has one input);
- chained residual pooling: ReLU, then ``pool_blocks`` blocks chained one after the other (5x5
  max-pool stride 1, 3x3 conv), each block's output added to the running sum;
- an output RCU.

RefineNet-1's output goes through two more RCUs, channel dropout, a 3x3 classifier conv, and is
upsampled bilinearly to the input size. The paper's settings are ``refine_channels=(256, 256,
256, 512)`` and ``pool_blocks=2`` on a ResNet-101; the defaults here are a small ResNet-style
encoder of basic blocks and narrow refinement paths. ``norm`` applies to the encoder only: the
refinement path has no normalisation, as in the paper. Total stride 32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segflow.models.arch.base import ArchInfo, PaddedSegmenter
from segflow.models.arch.layers import ResNetEncoder, conv_layer, dropout_layer, upsample_to
from segflow.models.arch.options import (
    COMMON_DEFAULTS,
    check_common,
    check_fraction,
    check_int,
    check_int_tuple,
)

__all__ = ["INFO", "ChainedResidualPooling", "RefineBlock", "RefineNet", "ResidualConvUnit", "build"]

INFO = ArchInfo(
    name="refinenet",
    spatial_dims=(2,),
    description="RefineNet: ResNet-style encoder (stride 4..32), four cascaded RefineNet blocks "
    "(residual conv units, multi-resolution fusion, chained residual pooling) from 1/32 to 1/4, "
    "classifier upsampled to full size; total stride 32.",
    defaults={
        "channels": (16, 32, 64, 128),
        "blocks": (1, 1, 1, 1),
        "stem_channels": 16,
        "refine_channels": (32, 32, 32, 64),
        "pool_blocks": 2,
        "dropout": 0.1,
        **COMMON_DEFAULTS,
    },
)


class ResidualConvUnit(nn.Module):
    """``x + conv(relu(conv(relu(x))))`` with 3x3 convs (with bias) keeping ``channels``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv_layer(2, channels, channels, 3, bias=True)
        self.conv2 = conv_layer(2, channels, channels, 3, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ChainedResidualPooling(nn.Module):
    """ReLU, then ``blocks`` chained (5x5 max-pool stride 1 → 3x3 conv) blocks summed with the input.

    ``out = r + b1 + b2 + ...`` with ``r = relu(x)``, ``b1 = conv1(pool(r))``, ``b2 = conv2(pool(b1))``.
    """

    def __init__(self, channels: int, blocks: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(5, stride=1, padding=2)
        self.convs = nn.ModuleList(conv_layer(2, channels, channels, 3, bias=True) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = F.relu(x)
        path = total
        for conv in self.convs:
            path = conv(self.pool(path))
            total = total + path
        return total


class RefineBlock(nn.Module):
    """One RefineNet block over ``len(in_channels)`` paths, the first at the highest resolution.

    Inputs ``(N, in_channels[k], Y_k, X_k)``; output ``(N, channels, Y_0, X_0)``.
    """

    def __init__(self, in_channels: Sequence[int], channels: int, pool_blocks: int) -> None:
        super().__init__()
        self.adapt = nn.ModuleList(nn.Sequential(ResidualConvUnit(c), ResidualConvUnit(c)) for c in in_channels)
        self.fuse: nn.ModuleList | None = None  # one input (RefineNet-4): no fusion, as in the paper
        if len(in_channels) > 1:
            self.fuse = nn.ModuleList(conv_layer(2, c, channels, 3, bias=True) for c in in_channels)
        self.pool = ChainedResidualPooling(channels, pool_blocks)
        self.out = ResidualConvUnit(channels)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        paths = [adapt(x) for adapt, x in zip(self.adapt, xs, strict=True)]
        if self.fuse is None:
            fused = paths[0]
        else:
            size = paths[0].shape[2:]
            fused = self.fuse[0](paths[0])
            for conv, path in zip(list(self.fuse)[1:], paths[1:], strict=True):
                fused = fused + upsample_to(conv(path), size)
        return self.out(self.pool(fused))


class RefineNet(PaddedSegmenter):
    """4-cascaded RefineNet on ``(N, C, Y, X)``; returns logits of the input's spatial size."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        channels: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (1, 1, 1, 1),
        stem_channels: int = 16,
        refine_channels: Sequence[int] = (32, 32, 32, 64),
        pool_blocks: int = 2,
        dropout: float = 0.1,
        norm: str = "batch",
        pad_mode: str = "replicate",
    ) -> None:
        super().__init__(2, in_channels, out_channels, 32, pad_mode)
        self.encoder = ResNetEncoder(2, in_channels, stem_channels, channels, blocks, norm=norm)
        self.reduce = nn.ModuleList(
            conv_layer(2, c, r, 3, bias=True) for c, r in zip(channels, refine_channels, strict=True)
        )
        refine: list[RefineBlock] = []
        for level in range(4):  # refine[level] runs at 1/(4 * 2^level); the last has one input
            inputs = [refine_channels[level]] + ([refine_channels[level + 1]] if level < 3 else [])
            refine.append(RefineBlock(inputs, refine_channels[level], pool_blocks))
        self.refine = nn.ModuleList(refine)
        self.head = nn.Sequential(
            ResidualConvUnit(refine_channels[0]),
            ResidualConvUnit(refine_channels[0]),
            dropout_layer(2, dropout),
            conv_layer(2, refine_channels[0], out_channels, 3, bias=True),
        )

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        features = [reduce(f) for reduce, f in zip(self.reduce, self.encoder(x), strict=True)]
        out = self.refine[3]([features[3]])
        for level in (2, 1, 0):
            out = self.refine[level]([features[level], out])
        return upsample_to(self.head(out), x.shape[2:])


def build(spatial_dims: int, in_channels: int, out_channels: int, options: dict[str, Any]) -> RefineNet:
    """RefineNet from validated options (see :data:`INFO` for the defaults)."""
    arch, d = "refinenet", INFO.defaults
    kwargs: dict[str, Any] = {
        "channels": check_int_tuple(arch, "channels", options["channels"], d["channels"], length=4),
        "blocks": check_int_tuple(arch, "blocks", options["blocks"], d["blocks"], length=4),
        "refine_channels": check_int_tuple(
            arch, "refine_channels", options["refine_channels"], d["refine_channels"], length=4
        ),
        "stem_channels": check_int(arch, "stem_channels", options["stem_channels"]),
        "pool_blocks": check_int(arch, "pool_blocks", options["pool_blocks"], minimum=0),
        "dropout": check_fraction(arch, "dropout", options["dropout"]),
    }
    kwargs["norm"], kwargs["pad_mode"] = check_common(arch, options)
    return RefineNet(in_channels, out_channels, **kwargs)
