"""Tiny hand-computed examples shared by the loss tests (tests/training/test_losses*.py)."""

from __future__ import annotations

import math

import torch

LN3 = math.log(3.0)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def t(values: list, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def close(value: torch.Tensor, expected: float, tol: float = 1e-9) -> bool:
    return math.isclose(float(value), expected, rel_tol=tol, abs_tol=tol)


# Binary example used throughout: logits 1x1x2x2, target 1x2x2.
BIN_LOGITS = t([[[[1.0, -2.0], [0.5, 3.0]]]])
BIN_TARGET = t([[[1.0, 0.0], [0.0, 1.0]]])
# per-pixel BCE: -log σ(x) for y=1, -log(1 - σ(x)) for y=0
BIN_PIXELS = [
    -math.log(sigmoid(1.0)),
    -math.log(1.0 - sigmoid(-2.0)),
    -math.log(1.0 - sigmoid(0.5)),
    -math.log(sigmoid(3.0)),
]

# Multi-class example: logits 1x3x1x2 (N, C, H, W), target 1x1x2.
MC_LOGITS = t([[[[1.0, 0.0]], [[2.0, 0.0]], [[3.0, 0.0]]]])
MC_TARGET = torch.tensor([[[2, 0]]])
MC_PIXELS = [
    -math.log(math.exp(3) / (math.exp(1) + math.exp(2) + math.exp(3))),  # pixel 0, true class 2
    math.log(3.0),  # pixel 1: uniform logits, p = 1/3 for the true class 0
]


# Binary region example: p = σ(logits) = (1/2, 3/4, 1/4, 1/2), y = (1, 1, 0, 0)
REG_LOGITS = t([[[[0.0, LN3], [-LN3, 0.0]]]])
REG_TARGET = t([[[1.0, 1.0], [0.0, 0.0]]])
REG_I = 0.5 + 0.75  # sum(p * y)
REG_P = 0.5 + 0.75 + 0.25 + 0.5  # sum(p)
REG_Y = 2.0  # sum(y)

# Multi-class region example: 2 classes, 2 pixels; p(class 1) = (3/4, 1/2), target (1, 0)
MREG_LOGITS = t([[[[0.0, 0.0]], [[LN3, 0.0]]]])
MREG_TARGET = torch.tensor([[[1, 0]]])
MREG_J0 = 0.5 / (0.75 + 1.0 - 0.5)  # I0 = 1/2, sum p0 = 3/4, sum y0 = 1
MREG_J1 = 0.75 / (1.25 + 1.0 - 0.75)  # I1 = 3/4, sum p1 = 5/4, sum y1 = 1
