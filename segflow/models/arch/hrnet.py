"""HRNetV2 for segmentation (Wang et al. 2019, "Deep High-Resolution Representation Learning").

2D only; axis order ``(N, C, Y, X)``. The stem (two stride-2 3x3 convs) brings the input to 1/4;
stage 1 is a stack of bottleneck blocks at 1/4; stages 2, 3 and 4 keep 2, 3 and 4 parallel
branches at 1/4, 1/8, 1/16 and 1/32 with ``W, 2W, 4W, 8W`` channels (``W = width``). Each stage is
a sequence of high-resolution modules: basic residual blocks on every branch, then a fusion
where every output branch sums all input branches (strided 3x3 convs going down, a 1x1 conv and
bilinear upsampling going up) followed by ReLU. A transition before each stage adds the next
lower-resolution branch (a stride-2 3x3 conv from the lowest branch). The HRNetV2 head upsamples
all branches to 1/4, concatenates them (``15 W`` channels), applies 1x1 conv-norm-ReLU and a 1x1
conv to classes, and upsamples the logits to the input size. Total stride 32.

``depth`` picks the module/block counts of the official configurations
(github.com/HRNet/HRNet-Semantic-Segmentation, ``experiments/cityscapes/*.yaml``); the stem is
64 channels in all of them:

=========== ======================== ============== ============================== ==========
depth       stage 1 bottlenecks      HR modules     basic blocks per branch        official
            (x planes, out 4x)       stages 2/3/4   in each module                 width
=========== ======================== ============== ============================== ==========
small-v1    1 x 32                   1 / 1 / 1      2                              16
small-v2    2 x 64                   1 / 3 / 2      2                              18
full        4 x 64                   1 / 4 / 3      4                              18, 48
=========== ======================== ============== ============================== ==========

So ``width=16, depth="small-v1"`` (the default) is HRNetV2-W18-Small-v1 (1.5 M parameters with
19 classes, as the official README lists), ``width=18, depth="small-v2"`` is HRNetV2-W18-Small-v2
(3.9 M) and ``width=48, depth="full"`` is the paper's HRNetV2-W48 (65.8 M in the official
README). Unlike the official code (``align_corners=True``) upsampling uses ``align_corners=False``
like every other architecture here; that changes no parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from segflow.models.arch.base import ArchInfo, PaddedSegmenter
from segflow.models.arch.layers import BasicBlock, ConvNormAct, conv_layer, norm_layer, upsample_to
from segflow.models.arch.options import COMMON_DEFAULTS, check_choice, check_common, check_int

__all__ = ["DEPTHS", "INFO", "Bottleneck", "Depth", "HRModule", "HRNet", "build"]


@dataclass(frozen=True)
class Depth:
    """Module and block counts of one HRNet configuration (see the module docstring's table)."""

    stage1_planes: int
    stage1_blocks: int
    modules: tuple[int, int, int]
    blocks: int


#: The official configurations by name.
DEPTHS: dict[str, Depth] = {
    "small-v1": Depth(stage1_planes=32, stage1_blocks=1, modules=(1, 1, 1), blocks=2),
    "small-v2": Depth(stage1_planes=64, stage1_blocks=2, modules=(1, 3, 2), blocks=2),
    "full": Depth(stage1_planes=64, stage1_blocks=4, modules=(1, 4, 3), blocks=4),
}
STEM_CHANNELS = 64

INFO = ArchInfo(
    name="hrnet",
    spatial_dims=(2,),
    description="HRNetV2: stem to 1/4, parallel branches at 1/4..1/32 (width W, 2W, 4W, 8W) with "
    "repeated multi-resolution fusion, all branches upsampled to 1/4 and concatenated, 1x1 head; "
    "depth small-v1 / small-v2 / full as the official configs (W48 full = the paper's "
    "HRNetV2-W48); total stride 32.",
    defaults={"width": 16, "depth": "small-v1", **COMMON_DEFAULTS},
)


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 (to ``planes``), 3x3, 1x1 (to ``4 planes``), projection shortcut if needed."""

    expansion = 4

    def __init__(self, cin: int, planes: int, *, norm: str = "batch") -> None:
        super().__init__()
        cout = planes * self.expansion
        bias = norm == "none"
        self.body = nn.Sequential(
            ConvNormAct(2, cin, planes, 1, norm=norm),
            ConvNormAct(2, planes, planes, 3, norm=norm),
            conv_layer(2, planes, cout, 1, bias=bias),
            norm_layer(2, norm, cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if cin != cout:
            self.shortcut = nn.Sequential(conv_layer(2, cin, cout, 1, bias=bias), norm_layer(2, norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def _fuse_layer(source: int, target: int, channels: list[int], norm: str) -> nn.Module:
    """Path from branch ``source`` to branch ``target`` (branch k is at 1/(4 2^k))."""
    bias = norm == "none"
    if source == target:
        return nn.Identity()
    if source > target:  # lower resolution: 1x1 conv + norm here, bilinear upsampling in forward
        return nn.Sequential(
            conv_layer(2, channels[source], channels[target], 1, bias=bias), norm_layer(2, norm, channels[target])
        )
    steps: list[nn.Module] = []
    for step in range(target - source):  # stride-2 3x3 convs; ReLU between them, not after the last
        last = step == target - source - 1
        cout = channels[target] if last else channels[source]
        conv = conv_layer(2, channels[source], cout, 3, stride=2, bias=bias)
        steps.append(nn.Sequential(conv, norm_layer(2, norm, cout), *([] if last else [nn.ReLU(inplace=True)])))
    return nn.Sequential(*steps)


class HRModule(nn.Module):
    """One high-resolution module: ``blocks`` basic blocks per branch, then multi-resolution fusion.

    Takes and returns a list of ``len(channels)`` tensors ``(N, channels[k], Y/2^k, X/2^k)`` relative
    to the first; output k is ``ReLU(sum_j fuse[k][j](x_j))``.
    """

    def __init__(self, channels: list[int], blocks: int, norm: str) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(2, c, c, norm=norm) for _ in range(blocks))) for c in channels
        )
        count = len(channels)
        self.fuse = nn.ModuleList(
            nn.ModuleList(_fuse_layer(j, i, channels, norm) for j in range(count)) for i in range(count)
        )

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        fused = []
        for i, paths in enumerate(self.fuse):
            total = xs[i]
            for j, path in enumerate(cast(nn.ModuleList, paths)):
                if j == i:
                    continue
                y = path(xs[j])
                total = total + (upsample_to(y, xs[i].shape[2:]) if j > i else y)
            fused.append(F.relu(total))
        return fused


class HRNet(PaddedSegmenter):
    """HRNetV2 on ``(N, C, Y, X)``; returns logits of the input's spatial size."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        width: int = 16,
        depth: str = "small-v1",
        norm: str = "batch",
        pad_mode: str = "replicate",
    ) -> None:
        super().__init__(2, in_channels, out_channels, 32, pad_mode)
        config = DEPTHS[depth]
        self.stem = nn.Sequential(
            ConvNormAct(2, in_channels, STEM_CHANNELS, 3, stride=2, norm=norm),
            ConvNormAct(2, STEM_CHANNELS, STEM_CHANNELS, 3, stride=2, norm=norm),
        )
        stage1_out = config.stage1_planes * Bottleneck.expansion
        self.stage1 = nn.Sequential(
            *(
                Bottleneck(STEM_CHANNELS if i == 0 else stage1_out, config.stage1_planes, norm=norm)
                for i in range(config.stage1_blocks)
            )
        )
        previous = [stage1_out]
        transitions: list[nn.Module] = []
        stages: list[nn.Module] = []
        for stage, modules in enumerate(config.modules):
            channels = [width * 2**k for k in range(stage + 2)]
            transitions.append(self._transition(previous, channels, norm))
            stages.append(nn.Sequential(*(HRModule(channels, config.blocks, norm) for _ in range(modules))))
            previous = channels
        self.transitions = nn.ModuleList(transitions)
        self.stages = nn.ModuleList(stages)
        head = sum(previous)
        self.head = nn.Sequential(
            conv_layer(2, head, head, 1, bias=True),
            norm_layer(2, norm, head),
            nn.ReLU(inplace=True),
            conv_layer(2, head, out_channels, 1, bias=True),
        )

    @staticmethod
    def _transition(previous: list[int], channels: list[int], norm: str) -> nn.ModuleList:
        """Per output branch: identity, a 3x3 conv changing channels, or (new branch) a stride-2 conv."""
        layers: list[nn.Module] = []
        for k, cout in enumerate(channels):
            if k < len(previous):
                same = previous[k] == cout
                layers.append(nn.Identity() if same else ConvNormAct(2, previous[k], cout, 3, norm=norm))
            else:
                layers.append(ConvNormAct(2, previous[-1], cout, 3, stride=2, norm=norm))
        return nn.ModuleList(layers)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Branch outputs at 1/4, 1/8, 1/16, 1/32 of a stride-32-multiple input ``(N, C, Y, X)``."""
        xs = [self.stage1(self.stem(x))]
        for transition, stage in zip(self.transitions, self.stages, strict=True):
            xs = [layer(xs[min(k, len(xs) - 1)]) for k, layer in enumerate(cast(nn.ModuleList, transition))]
            xs = stage(xs)
        return xs

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        xs = self.features(x)
        size = xs[0].shape[2:]
        joined = torch.cat([xs[0], *(upsample_to(y, size) for y in xs[1:])], dim=1)
        return upsample_to(self.head(joined), x.shape[2:])


def build(spatial_dims: int, in_channels: int, out_channels: int, options: dict[str, Any]) -> HRNet:
    """HRNet from validated options (see :data:`INFO` for the defaults)."""
    arch = "hrnet"
    width = check_int(arch, "width", options["width"])
    depth = check_choice(arch, "depth", options["depth"], tuple(DEPTHS))
    norm, pad_mode = check_common(arch, options)
    return HRNet(in_channels, out_channels, width=width, depth=str(depth), norm=norm, pad_mode=pad_mode)
