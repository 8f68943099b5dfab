"""``segflow train`` for Mask R-CNN (``model.architecture.name: maskrcnn``, ``output: {activation: instances}``).

The run reuses the semantic loop's pieces: chip sources, sampling (``sampling.foreground`` centres
chips on objects) and augmentation (:mod:`~segflow.training.data`, whose chips then carry instance
ids moved with the labels), the optimiser and schedule (:mod:`~segflow.training.run`,
:mod:`~segflow.training.schedule`), checkpoints (:mod:`~segflow.training.checkpoint`, same format,
mid-epoch ones included) and the package writer. Per step the chips' targets are built from their
instance ids (:mod:`~segflow.training.instance_targets`) and the loss is the sum of the model's
losses (the paper's); gradients are clipped when ``optimizer.clip_grad_norm`` is set. Training is
float32 (no mixed precision). Every epoch is validated (:mod:`~segflow.training.instance_evaluation`:
mask AP@[.5:.95], AP50, object P / R / F1) and the epoch with the best mask AP is exported
(``export: best``) as a package with ``architecture: {name: maskrcnn, args}`` and ``output:
{activation: instances, score_threshold}``.

Reproducibility as in :mod:`~segflow.training.loop`: chip ``i`` of epoch ``e`` has its own generator,
torch's RNG state (weight init, RPN and RoI sampling) is in the checkpoint, so a resumed run gives
on the CPU the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, OutputError
from ..models.maskrcnn import MaskRCNN, build_maskrcnn, config_args
from ..models.package import Normalization
from ..models.writer import package_contract, readme_text, validate_contract, write_package
from ..predict import resolve_device
from .checkpoint import CHECKPOINT, _cpu_state, _load_checkpoint, _restore, _save_checkpoint
from .config import TrainConfig
from .data import _batches, _Data, _describe, _prepare_data
from .instance_evaluation import InstanceMetrics, evaluate_instances, instance_metrics_table
from .instance_report import training_text
from .instance_targets import instance_targets
from .run import _Run, build_optimizer
from .schedule import ScheduleSpan, lr_factor

if TYPE_CHECKING:
    from .loop import Progress

__all__ = ["InstanceEpoch", "InstanceTrainResult", "train_instances"]


@dataclass(frozen=True)
class InstanceEpoch:
    """One epoch: mean training loss, learning rate at its end, validation metrics and timing."""

    epoch: int
    train_loss: float
    lr: float
    validation: InstanceMetrics
    train_seconds: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "train_loss": round(self.train_loss, 6), "lr": self.lr,
                "train_seconds": round(self.train_seconds, 3), "seconds": round(self.seconds, 3),
                "validation": self.validation.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InstanceEpoch:
        return cls(int(d["epoch"]), float(d["train_loss"]), float(d["lr"]), InstanceMetrics.from_dict(d["validation"]),
                   float(d["train_seconds"]), float(d["seconds"]))


@dataclass(frozen=True)
class InstanceTrainResult:
    """What :func:`train_instances` produced (the Mask R-CNN counterpart of ``TrainResult``)."""

    package_dir: Path
    checkpoint: Path
    history: tuple[InstanceEpoch, ...]
    exported_epoch: int
    validation: InstanceMetrics
    device: str
    warnings: tuple[str, ...] = ()

    @property
    def seconds_per_epoch(self) -> float:
        """Mean wall time of an epoch (training and validation)."""
        return float(np.mean([r.seconds for r in self.history])) if self.history else math.nan

    def summary(self) -> str:
        return (f"wrote {self.package_dir} | {len(self.history)} epochs, {self.seconds_per_epoch:.1f} s/epoch on "
                f"{self.device} | validation (epoch {self.exported_epoch}) {self.validation.summary()}")


def _build_run(config: TrainConfig, device: torch.device, steps: int, span: ScheduleSpan | None) -> _Run:
    """The seeded Mask R-CNN, optimiser and schedule (``span``: a resumed run's planned schedule length)."""
    if span is None:
        span = ScheduleSpan.plan(config.optimizer.schedule, config.epochs, steps, config.optimizer.warmup)
    torch.manual_seed(config.seed)
    model = build_maskrcnn(len(config.model.bands), len(config.model.classes), config.model.architecture.args)
    model = model.to(device)
    optimizer = build_optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(span))
    return _Run(device, False, model, nn.Identity(), optimizer, scheduler, torch.amp.GradScaler(device.type,
                enabled=False), None, steps, span=span, clip=config.optimizer.clip_grad_norm)


def _train_step(run: _Run, images: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, classes: int) -> float:
    """One optimiser step on a batch; returns the summed loss."""
    targets = [{k: v.to(run.device) for k, v in instance_targets(lab.numpy(), idx.numpy(), classes).items()}
               for lab, idx in zip(labels, ids, strict=True)]
    losses = run.model(images.to(run.device), targets)
    assert isinstance(losses, dict)
    loss = torch.stack(list(losses.values())).sum()
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.clip is not None:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.clip)
    run.optimizer.step()
    run.scheduler.step()
    return float(loss.detach())


class _Loop:
    """The run's mutable state besides :class:`_Run`: the epoch history of instance metrics."""

    def __init__(self, config: TrainConfig, run: _Run, data: _Data, progress: Progress | None) -> None:
        self.config, self.run, self.data, self.progress = config, run, data, progress
        self.history: list[InstanceEpoch] = []

    def save(self, partial: tuple[int, float, float] | None = None) -> None:
        _save_checkpoint(self.config.output / CHECKPOINT, self.run, self.data, partial,
                         records=[r.to_dict() for r in self.history])

    def _report(self, phase: Literal["train", "validate"], epoch: int, step: int, loss: float, seconds: float = 0.0,
                lr: float = math.nan) -> None:
        if self.progress is None:
            return
        from .loop import TrainProgress

        last = self.history[-1].validation.mask_ap if self.history else None
        self.progress(TrainProgress(phase, epoch, self.config.epochs, step, self.run.steps,
                                    loss, last, seconds, lr, metric="mask AP"))

    def train_epoch(self, epoch: int, pool: ThreadPoolExecutor) -> float:
        run, config = self.run, self.config
        run.model.train()
        first, total = run.resume_step, run.resume_loss
        run.resume_step, run.resume_loss = 0, 0.0
        every, started = config.checkpoint_every_steps, time.perf_counter()
        classes = len(config.model.classes)
        for step, batch in enumerate(_batches(self.data, epoch, run.steps, pool, first), start=first + 1):
            lr = float(run.optimizer.param_groups[0]["lr"])
            images, labels, ids = batch
            value = _train_step(run, images, labels, ids, classes)
            if not math.isfinite(value):
                raise ConfigError(f"the loss became {value} at epoch {epoch} step {step}; lower optimizer.lr "
                                  f"(now {config.optimizer.lr}) or set optimizer.clip_grad_norm")
            total += value
            if every is not None and step % every == 0 and step < run.steps:
                self.save((step, total, run.resume_seconds + time.perf_counter() - started))
            self._report("train", epoch, step, total / step, lr=lr)
        return total / run.steps

    def validate(self) -> InstanceMetrics:
        data = self.data
        assert data.val_ids is not None
        return evaluate_instances(self.run.model, data.val_images, data.val_labels, data.val_ids,
                                  self.config.model.class_names, score_threshold=self.config.model.output.min_score,
                                  device=self.run.device, batch_size=self.config.batch_size)

    def epoch(self, epoch: int, pool: ThreadPoolExecutor) -> None:
        run = self.run
        started = time.perf_counter() - run.resume_seconds
        loss = self.train_epoch(epoch, pool)
        run.resume_seconds = 0.0
        trained = time.perf_counter() - started
        metrics = self.validate()
        record = InstanceEpoch(epoch, loss, float(run.scheduler.get_last_lr()[0]), metrics, trained,
                               time.perf_counter() - started)
        run.epoch = epoch
        self.history.append(record)
        score = -math.inf if math.isnan(metrics.mask_ap) else metrics.mask_ap
        if score > run.best_metric or run.best_state is None:
            run.best_metric, run.best_epoch, run.best_state = score, epoch, _cpu_state(run.model)
        self._report("validate", epoch, run.steps, loss, record.seconds)


def _export(loop: _Loop, command: str | None) -> InstanceTrainResult:
    config, run, data = loop.config, loop.run, loop.data
    epoch = run.best_epoch if config.export == "best" and run.best_state is not None else run.epoch
    state = run.best_state if epoch == run.best_epoch and run.best_state is not None else _cpu_state(run.model)
    validation = next(r.validation for r in loop.history if r.epoch == epoch)
    assert isinstance(run.model, MaskRCNN)
    description = (f"{config.model.description.strip()} Validation chips (epoch {epoch}): "
                   f"{validation.summary()}.").strip()
    contract = package_contract(config, data.normalization, description)
    contract["architecture"] = {"name": "maskrcnn", "args": config_args(run.model.config)}
    contract["output"] = {"activation": "instances", "score_threshold": config.model.output.min_score}
    spec = validate_contract(contract)
    sections = {
        "Training data": f"Training chips from:\n{_describe(data.sources)}\n\nValidation: {data.val_description}.",
        "Training": training_text(config, run, loop.history, data.notes, command),
        "Measured quality": f"Validation chips, exported weights (epoch {epoch}):\n\n"
                            f"{instance_metrics_table(validation)}",
    }
    package = write_package(config.package_dir, contract, state, readme_text(spec, sections))
    return InstanceTrainResult(package, config.output / CHECKPOINT, tuple(loop.history), epoch, validation,
                               str(run.device), tuple(data.notes))


def train_instances(config: TrainConfig, *, progress: Progress | None = None, command: str | None = None
                    ) -> InstanceTrainResult:
    """Train the configured Mask R-CNN and write its model package (what ``train`` does for ``maskrcnn``).

    Parameters
    ----------
    config : TrainConfig
        A validated config with ``model.architecture.name: maskrcnn``; with ``config.resume`` training
        continues from ``<config.output>/checkpoint.pt``.
    progress : callable, optional
        Called with a ``TrainProgress`` (``metric`` "mask AP") after every step and every validation.
    command : str, optional
        The command line that started the run, recorded in the package README.

    Returns
    -------
    InstanceTrainResult
        Package path, history and the exported epoch's validation metrics.

    Raises
    ------
    ConfigError, InputError, OutputError, DeviceError
        One-line messages naming the bad value and how to fix it.
    """
    device = resolve_device(config.device)
    build_maskrcnn(len(config.model.bands), len(config.model.classes), config.model.architecture.args)  # args
    try:
        config.output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {config.output}: {exc.strerror or exc}") from None
    state = _load_checkpoint(config) if config.resume else None
    normalization = Normalization.model_validate(state["normalization"]) if state is not None else None
    data = _prepare_data(config, normalization, instances=True)
    try:
        span = ScheduleSpan.from_dict(state["schedule"]) if state is not None else None
        run = _build_run(config, device, config.chips_per_epoch // config.batch_size, span)
        loop = _Loop(config, run, data, progress)
        if state is not None:
            _restore(run, state, history=False)
            loop.history = [InstanceEpoch.from_dict(r) for r in state["history"]]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segflow-chips") as pool:
            for epoch in range(run.epoch + 1, config.epochs + 1):
                loop.epoch(epoch, pool)
                loop.save()
        if not loop.history:
            raise ConfigError(f"nothing to export: the checkpoint has 0 epochs and epochs={config.epochs}")
        return _export(loop, command)
    finally:
        data.close()
