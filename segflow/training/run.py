"""One training run on one device: network, loss, optimiser, learning-rate schedule and gradient scaler.

:func:`_build_run` seeds torch with ``config.seed`` and builds them; :class:`_Run` also holds what a
checkpoint keeps (epoch, best weights, :class:`EpochRecord` history). Mixed precision (a gradient
scaler) is used on CUDA only; on the CPU training is plain float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..models.arch import build_architecture
from .config import TrainConfig
from .evaluation import Metrics
from .losses import build_loss
from .sources import IGNORE

__all__ = ["EpochRecord"]


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: mean training loss, learning rate at its end, validation metrics and timing."""

    epoch: int
    train_loss: float
    lr: float
    validation: Metrics
    train_seconds: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "train_loss": round(self.train_loss, 6), "lr": self.lr,
                "train_seconds": round(self.train_seconds, 3), "seconds": round(self.seconds, 3),
                "validation": self.validation.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochRecord:
        return cls(int(d["epoch"]), float(d["train_loss"]), float(d["lr"]), Metrics.from_dict(d["validation"]),
                   float(d["train_seconds"]), float(d["seconds"]))


@dataclass
class _Run:
    """Network, loss, optimiser, schedule and scaler on one device, plus the training state."""

    device: torch.device
    amp: bool
    model: nn.Module
    loss: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    class_weights: torch.Tensor | None
    steps: int
    epoch: int = 0
    best_metric: float = -math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[EpochRecord] = field(default_factory=list)


def _loss_spec(loss: str | dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": loss} if isinstance(loss, str) else dict(loss)
    spec.setdefault("ignore_index", IGNORE)
    return spec


def _build_loss(config: TrainConfig) -> nn.Module:
    """The configured loss; checked once on dummy multi-class logits."""
    loss = build_loss(_loss_spec(config.loss))
    classes = len(config.model.classes)
    dims = config.model.spatial_dims
    try:
        loss(torch.zeros((1, classes) + (2,) * dims), torch.zeros((1,) + (2,) * dims, dtype=torch.long))
    except (InputError, ConfigError) as exc:
        raise ConfigError(
            f"loss {config.loss!r} does not fit a softmax model with {classes} classes ({exc}); "
            "use ce, focal, dice, jaccard or bce+jaccard"
        ) from None
    return loss


def _schedule(config: TrainConfig, steps: int) -> Callable[[int], float]:
    total = max(1, config.epochs * steps)
    warmup = int(config.optimizer.warmup * total)
    cosine = config.optimizer.schedule == "cosine"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _build_run(config: TrainConfig, device: torch.device, steps: int) -> _Run:
    torch.manual_seed(config.seed)
    arch = config.model.architecture
    model = build_architecture(arch.name, spatial_dims=config.model.spatial_dims,
                               in_channels=len(config.model.bands), out_channels=len(config.model.classes),
                               **arch.args).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optimizer.lr,
                                  weight_decay=config.optimizer.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, steps))
    amp = config.amp and device.type == "cuda"
    weights = None
    if config.class_weights is not None:
        table = torch.zeros(256)
        table[: len(config.class_weights)] = torch.tensor(config.class_weights)
        weights = table.to(device)
    return _Run(device, amp, model, _build_loss(config).to(device), optimizer, scheduler,
                torch.amp.GradScaler(device.type, enabled=amp), weights, steps)
