"""SegNet: conv encoder whose max-pooling indices drive ``MaxUnpool2d`` in the decoder.

2D only; axis order ``(N, C, Y, X)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segflow.models.arch.base import ArchInfo, PaddedSegmenter
from segflow.models.arch.layers import ConvNormAct, conv_layer
from segflow.models.arch.options import COMMON_DEFAULTS, check_common, check_int, check_int_tuple

__all__ = ["INFO", "MaxUnpool", "SegNet", "build", "unpool_scatter"]

INFO = ArchInfo(
    name="segnet",
    spatial_dims=(2,),
    description="SegNet: conv encoder with 2x2 max-pooling that keeps the argmax indices, mirrored "
    "decoder upsampling with MaxUnpool2d at those indices; total stride 2**len(channels).",
    defaults={"channels": (16, 32, 64, 128), "convs_per_stage": 2, **COMMON_DEFAULTS},
)


def unpool_scatter(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``max_unpool2d`` with kernel 2 / stride 2, written as a scatter into zero planes of twice the size."""
    n, c, h, w = x.shape
    planes = x.new_zeros((n, c, 4 * h * w)).scatter(2, indices.flatten(2), x.flatten(2))
    return planes.view(n, c, 2 * h, 2 * w)


class MaxUnpool(nn.MaxUnpool2d):
    """``MaxUnpool2d(2)`` that also traces and exports with dynamic sizes.

    Eager calls run ``nn.MaxUnpool2d``. PyTorch's unpool output-size check fails on traced
    sizes, so under ``torch.jit.trace`` / ONNX export the identical operation is recorded as a
    scatter of the values at the pooling indices (ONNX ``ScatterElements``).
    """

    def __init__(self) -> None:
        super().__init__(2)

    def forward(
        self, input: torch.Tensor, indices: torch.Tensor, output_size: list[int] | None = None
    ) -> torch.Tensor:
        if torch.jit.is_tracing() and output_size is None:
            return unpool_scatter(input, indices)
        return super().forward(input, indices, output_size)


class SegNet(PaddedSegmenter):
    """SegNet on ``(N, C, Y, X)``; returns logits of the input's spatial size.

    Stage ``i`` (width ``channels[i]``) ends in ``MaxPool2d(2, return_indices=True)``; the
    decoder stage mirroring it starts with :class:`MaxUnpool` (``MaxUnpool2d(2)``) at the same indices.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        channels: Sequence[int] = (16, 32, 64, 128),
        convs_per_stage: int = 2,
        norm: str = "batch",
        pad_mode: str = "replicate",
    ) -> None:
        super().__init__(2, in_channels, out_channels, 2 ** len(channels), pad_mode)
        self.encoders = nn.ModuleList()
        cin = in_channels
        for cout in channels:
            convs = [ConvNormAct(2, cin if i == 0 else cout, cout, norm=norm) for i in range(convs_per_stage)]
            self.encoders.append(nn.Sequential(*convs))
            cin = cout
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = MaxUnpool()
        self.decoders = nn.ModuleList()
        targets = [channels[0], *channels[:-1]]
        for width, target in zip(channels[::-1], targets[::-1], strict=True):
            convs = [
                ConvNormAct(2, width, width if i < convs_per_stage - 1 else target, norm=norm)
                for i in range(convs_per_stage)
            ]
            self.decoders.append(nn.Sequential(*convs))
        self.head = conv_layer(2, channels[0], out_channels, 1, bias=True)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        indices = []
        for encoder in self.encoders:
            x, idx = self.pool(encoder(x))
            indices.append(idx)
        for decoder in self.decoders:
            x = decoder(self.unpool(x, indices.pop()))
        return self.head(x)


def build(spatial_dims: int, in_channels: int, out_channels: int, options: dict[str, Any]) -> SegNet:
    """SegNet from validated options (see :data:`INFO` for the defaults)."""
    channels = check_int_tuple("segnet", "channels", options["channels"], INFO.defaults["channels"])
    convs = check_int("segnet", "convs_per_stage", options["convs_per_stage"])
    norm, pad_mode = check_common("segnet", options)
    return SegNet(
        in_channels, out_channels, channels=channels, convs_per_stage=convs, norm=norm, pad_mode=pad_mode
    )
