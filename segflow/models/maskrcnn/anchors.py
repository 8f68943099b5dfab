"""Anchors for the RPN: one size per pyramid level, several aspect ratios, one set per feature cell.

Boxes ``(x1, y1, x2, y2)`` in input pixels. Anchor centres sit at the centres of the feature cells,
``((j + 0.5) * stride, (i + 0.5) * stride)`` for cell ``(i, j)`` (continuous pixel coordinates, the
convention of the aligned RoIAlign; torchvision puts them on the cell corners instead). An anchor of
``size`` s and aspect ratio r (height / width) has width ``s / sqrt(r)`` and height ``s * sqrt(r)``
(area s^2), unrounded. Order: cell-major (row, column), then ratio, matching the RPN head's output
reshaped as ``(N, A, H, W) -> (N, H, W, A)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["cell_anchors", "grid_anchors"]


def cell_anchors(size: float, ratios: Sequence[float]) -> torch.Tensor:
    """``(len(ratios), 4)`` anchors of ``size`` centred on the origin."""
    rows = []
    for r in ratios:
        w, h = size / math.sqrt(r), size * math.sqrt(r)
        rows.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(rows, dtype=torch.float32)


def grid_anchors(feature_sizes: Sequence[tuple[int, int]], strides: Sequence[int], sizes: Sequence[float],
                 ratios: Sequence[float], device: torch.device | None = None) -> list[torch.Tensor]:
    """Per level ``(H * W * len(ratios), 4)`` anchors for feature maps of ``(H, W)`` at ``strides``."""
    out = []
    for (h, w), stride, size in zip(feature_sizes, strides, sizes, strict=True):
        base = cell_anchors(size, ratios).to(device)
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)
        out.append((shifts + base[None]).reshape(-1, 4))
    return out
