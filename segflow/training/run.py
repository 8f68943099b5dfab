"""One training run on one device: network, loss, optimiser, learning-rate schedule and gradient scaler.

:func:`_build_run` seeds torch with ``config.seed`` and builds them; :class:`_Run` also holds what a
checkpoint keeps (epoch, best weights, :class:`EpochRecord` history). Mixed precision (a gradient
scaler) is used on CUDA only; on the CPU training is plain float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..models.arch import build_architecture
from .config import TrainConfig
from .evaluation import Metrics
from .losses import build_loss, losses_for
from .output_config import output_channels, output_kind
from .schedule import ScheduleSpan, lr_factor
from .sources import IGNORE

__all__ = ["EpochRecord", "build_optimizer", "optimizer_text"]


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
    span: ScheduleSpan | None = None  # the schedule's planned length (kept across resumes)
    clip: float | None = None  # optimizer.clip_grad_norm
    class_weight_values: tuple[float, ...] | None = None  # as used (class_weights: balanced resolved)
    resume_step: int = 0  # steps of epoch ``epoch + 1`` done before a mid-epoch checkpoint
    resume_loss: float = 0.0  # their summed loss
    resume_seconds: float = 0.0  # and training time
    stopped_early: int | None = None  # the epoch after which early stopping ended the run


def _loss_spec(loss: str | dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": loss} if isinstance(loss, str) else dict(loss)
    spec.setdefault("ignore_index", IGNORE)
    return spec


def _build_loss(config: TrainConfig) -> nn.Module:
    """The configured loss for the model's outputs (:func:`~segflow.training.losses.build_loss` refuses a
    loss that does not fit them); checked once on dummy logits and labels of the model's shapes."""
    output = config.model.output
    kind = output_kind(output)
    loss = build_loss(_loss_spec(config.loss), output=kind)
    classes = len(config.model.classes)
    channels = output_channels(output, classes)
    spatial = (2,) * config.model.spatial_dims
    labels = (1, classes, *spatial) if output.multilabel else (1, *spatial)
    try:
        loss(torch.zeros((1, channels, *spatial)), torch.zeros(labels, dtype=torch.long))
    except (InputError, ConfigError) as exc:
        what = "multi-label sigmoid" if output.multilabel else "binary sigmoid" if kind == "sigmoid" else "softmax"
        raise ConfigError(f"loss {config.loss!r} does not fit a {what} model with {classes} classes ({exc}); "
                          f"losses for {kind} outputs: {', '.join(losses_for(kind))}") from None
    return loss


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """``config.optimizer``'s AdamW or SGD (momentum 0.9 unless given) over ``model``'s parameters."""
    opt = config.optimizer
    if opt.name == "sgd":
        momentum = 0.9 if opt.momentum is None else opt.momentum
        return torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=momentum, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)


def optimizer_text(config: TrainConfig) -> str:
    """The optimiser in words for a README: ``AdamW lr ..., weight decay ...`` (or SGD with its momentum)."""
    opt = config.optimizer
    name = "AdamW" if opt.name == "adamw" else f"SGD (momentum {0.9 if opt.momentum is None else opt.momentum})"
    return f"{name} lr {opt.lr}, weight decay {opt.weight_decay}"


def _build_run(config: TrainConfig, device: torch.device, steps: int, *, span: ScheduleSpan | None = None,
               class_weights: Sequence[float] | None = None) -> _Run:
    """The run of ``config``: ``span`` is the schedule's planned length (a new run's by default, a
    resumed run's from its checkpoint); ``class_weights`` the per-class weights to use (default
    ``config.class_weights`` when it is a list)."""
    if span is None:
        span = ScheduleSpan.plan(config.optimizer.schedule, config.epochs, steps, config.optimizer.warmup)
    if class_weights is None and isinstance(config.class_weights, list):
        class_weights = config.class_weights
    torch.manual_seed(config.seed)
    arch = config.model.architecture
    model = build_architecture(arch.name, spatial_dims=config.model.spatial_dims,
                               in_channels=len(config.model.bands),
                               out_channels=output_channels(config.model.output, len(config.model.classes)),
                               **arch.args).to(device)
    optimizer = build_optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(span))
    amp = config.amp and device.type == "cuda"
    weights = None
    if class_weights is not None:
        table = torch.zeros(256)
        table[: len(class_weights)] = torch.tensor(list(class_weights))
        weights = table.to(device)
    return _Run(device, amp, model, _build_loss(config).to(device), optimizer, scheduler,
                torch.amp.GradScaler(device.type, enabled=amp), weights, steps, span=span,
                clip=config.optimizer.clip_grad_norm,
                class_weight_values=None if class_weights is None else tuple(float(w) for w in class_weights))
