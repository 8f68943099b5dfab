"""Shared base of every architecture: registry metadata and the pad-to-stride wrapper.

Every network takes ``(N, C, Y, X)`` (2D) or ``(N, C, Z, Y, X)`` (3D) float tensors of any
spatial size. :class:`PaddedSegmenter` pads the spatial axes at their far end up to a multiple
of the network's total stride, runs the network, and crops the logits back to the input size.
The pad amounts are computed from the input's shape on every call, so ``torch.jit.trace`` and
the TorchScript ONNX exporter record them as shape arithmetic, not as constants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segflow.errors import ModelError

__all__ = ["ArchInfo", "PaddedSegmenter", "crop_to", "pad_to_multiple"]


@dataclass(frozen=True)
class ArchInfo:
    """What the registry knows about one architecture.

    ``spatial_dims`` lists the supported dimensionalities (2: ``(N, C, Y, X)``, 3:
    ``(N, C, Z, Y, X)``); ``defaults`` holds every keyword option with its default value.
    """

    name: str
    spatial_dims: tuple[int, ...]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)


def _far_end_pads(amounts: list[Any]) -> list[Any]:
    """F.pad's argument (last axis first, (before, after) pairs) padding only the far end."""
    pads: list[Any] = []
    for amount in reversed(amounts):
        pads.extend([0, amount])
    return pads


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "replicate") -> torch.Tensor:
    """Pad the spatial axes of ``(N, C, *spatial)`` at their far end up to a multiple of ``multiple``.

    ``mode`` is ``"replicate"`` or ``"reflect"``; with ``"reflect"`` an axis shorter than its pad
    amount falls back to ``"replicate"``. That fallback is a Python decision, so a traced model
    keeps the choice made at trace time; ``"replicate"`` traces exactly at every size.
    """
    sizes = list(x.shape[2:])
    amounts = [(multiple - size % multiple) % multiple for size in sizes]
    if not torch.jit.is_tracing() and all(int(a) == 0 for a in amounts):
        return x
    if mode == "replicate":
        return F.pad(x, _far_end_pads(amounts), mode="replicate")
    fits = [bool(a < s) for a, s in zip(amounts, sizes, strict=True)]
    reflected = F.pad(
        x, _far_end_pads([a if ok else 0 for a, ok in zip(amounts, fits, strict=True)]), mode="reflect"
    )
    if all(fits):
        return reflected
    rest = [0 if ok else a for a, ok in zip(amounts, fits, strict=True)]
    return F.pad(reflected, _far_end_pads(rest), mode="replicate")


def crop_to(x: torch.Tensor, sizes: list[Any]) -> torch.Tensor:
    """Keep the first ``sizes[i]`` elements of each spatial axis of ``(N, C, *spatial)``."""
    index = (slice(None), slice(None), *(slice(0, size) for size in sizes))
    return x[index]


class PaddedSegmenter(nn.Module):
    """Base class: pad input to a multiple of ``total_stride``, run :meth:`forward_padded`, crop.

    Input ``(N, in_channels, Y, X)`` or ``(N, in_channels, Z, Y, X)`` of any spatial size;
    output raw logits ``(N, out_channels, *input_spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        total_stride: int,
        pad_mode: str = "replicate",
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.total_stride = total_stride
        self.pad_mode = pad_mode

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network on input whose spatial sizes are multiples of ``total_stride``."""
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != self.spatial_dims + 2:
            axes = "(N, C, Y, X)" if self.spatial_dims == 2 else "(N, C, Z, Y, X)"
            raise ModelError(
                f"{type(self).__name__} expects a {self.spatial_dims + 2}-D tensor {axes}, "
                f"got shape {tuple(x.shape)}; add or remove axes to match"
            )
        if not torch.jit.is_tracing() and x.shape[1] != self.in_channels:
            raise ModelError(
                f"{type(self).__name__} expects {self.in_channels} input channels, got "
                f"{x.shape[1]} (shape {tuple(x.shape)}); build it with "
                f"in_channels={x.shape[1]} or select matching bands"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, out_channels, *spatial)`` for input ``(N, in_channels, *spatial)``."""
        self._check_input(x)
        sizes = list(x.shape[2:])
        out = self.forward_padded(pad_to_multiple(x, self.total_stride, self.pad_mode))
        return crop_to(out, sizes)
