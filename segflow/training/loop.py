"""``segflow train``: train a segmentation network on chips and publish it as a model package.

:func:`train` samples chips by windowed reads from the configured sources (deterministic
under ``config.seed``), augments them, trains an architecture of
:mod:`segflow.models.arch` with AdamW (mixed precision with a gradient scaler on CUDA, plain
float32 on the CPU), validates every epoch (per-class IoU and Dice, mean IoU, pixel accuracy,
object F1 of ``thing`` classes) and writes a checkpoint after each epoch. The result is a
model package (``model.yaml`` + ``model.safetensors`` + ``README.md``) that ``tile-infer``
runs; with a ``test`` section it is also scored on whole scenes by sliding windows.

Reproducibility: chip ``i`` of epoch ``e`` is drawn and augmented with its own generator
``numpy.random.default_rng([seed, 1, e, i])``, so the data needs no saved state; torch's RNG
states (weight init, dropout) are saved in the checkpoint. Resuming from the checkpoint of
epoch ``k`` therefore gives, on the CPU, bit-identical weights to an uninterrupted run.

The run is split by concern: :mod:`~segflow.training.data` (sources, sampling, normalisation,
batches), :mod:`~segflow.training.run` (network, loss, optimiser), this module (epochs and
steps), :mod:`~segflow.training.checkpoint` and :mod:`~segflow.training.report` (README text);
the package is written by :mod:`segflow.models.writer`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, OutputError
from ..models.arch import build_architecture
from ..models.arch.encoder_weights import load_encoder_weights
from ..models.loading import build_network
from ..models.package import Normalization
from ..models.writer import metrics_table, package_contract, readme_text, validate_contract, write_package
from ..predict import resolve_device
from .checkpoint import CHECKPOINT, _cpu_state, _load_checkpoint, _restore, _save_checkpoint
from .chips import build_sources
from .config import TrainConfig
from .data import _batches, _Data, _describe, _prepare_data
from .evaluation import Metrics, accumulator_for, evaluate_chips, evaluate_sliding_window
from .finetune import apply_init, load_init
from .instance_config import is_instance_model
from .instance_loop import InstanceTrainResult, train_instances
from .output_config import output_channels
from .report import _quality_sentence, _test_text, _training_section
from .run import EpochRecord, _build_loss, _build_run, _Run
from .schedule import ScheduleSpan
from .stopping import should_stop

__all__ = ["CHECKPOINT", "EpochRecord", "TrainProgress", "TrainResult", "train"]


@dataclass(frozen=True)
class TrainProgress:
    """Where training stands; passed to the ``progress`` callback after every step and validation.

    ``phase`` is ``"train"`` after a training step and ``"validate"`` after an epoch's
    validation; ``loss`` is the running mean loss of the epoch; ``val_miou`` the latest
    validation mean IoU (None before the first validation); ``lr`` the learning rate the step
    used (NaN after a validation); ``metric`` names what ``val_miou`` holds (``mask AP`` for Mask R-CNN).
    """

    phase: Literal["train", "validate"]
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    val_miou: float | None
    seconds: float = 0.0
    lr: float = math.nan
    metric: str = "mean IoU"


Progress = Callable[[TrainProgress], None]


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` produced.

    Attributes
    ----------
    package_dir : Path
        The model package (``model.yaml``, ``model.safetensors``, ``README.md``).
    checkpoint : Path
        The last checkpoint (resume with ``config.resume``).
    history : tuple of EpochRecord
        Every epoch trained so far, resumed ones included.
    exported_epoch : int
        The epoch whose weights are in the package.
    validation : Metrics
        Validation metrics of the exported weights.
    test : Metrics or None
        Sliding-window metrics on the test sources, when configured.
    device : str
        The device trained on.
    stopped_early : int or None
        The epoch after which early stopping ended the run (None: it ran every epoch).
    warnings : tuple of str
        The run's one-line warnings (also in ``history.json``).
    """

    package_dir: Path
    checkpoint: Path
    history: tuple[EpochRecord, ...]
    exported_epoch: int
    validation: Metrics
    test: Metrics | None
    device: str
    stopped_early: int | None = None
    warnings: tuple[str, ...] = ()

    @property
    def seconds_per_epoch(self) -> float:
        """Mean wall time of an epoch (training and validation)."""
        return float(np.mean([r.seconds for r in self.history])) if self.history else math.nan

    def summary(self) -> str:
        test = f" | test {self.test.summary()}" if self.test is not None else ""
        stopped = f" (early stopping after epoch {self.stopped_early})" if self.stopped_early is not None else ""
        return (f"wrote {self.package_dir} | {len(self.history)} epochs{stopped}, {self.seconds_per_epoch:.1f} s/epoch "
                f"on {self.device} | validation (epoch {self.exported_epoch}) {self.validation.summary()}{test}")


def _train_step(run: _Run, images: torch.Tensor, labels: torch.Tensor, border: torch.Tensor | None = None
                ) -> torch.Tensor:
    """One optimiser step; the pixel weights are the class weights of the labels plus the border term."""
    x = images.to(run.device, non_blocking=True)
    y = labels.to(run.device, non_blocking=True)
    weight = run.class_weights[y] if run.class_weights is not None else None
    if border is not None:  # w(x) = w_c(x) + border term (w_c = 1 without class weights)
        term = border.to(run.device, non_blocking=True)
        weight = term + (weight if weight is not None else 1.0)
    with torch.autocast(device_type=run.device.type, dtype=torch.float16, enabled=run.amp):
        loss = run.loss(run.model(x), y, weight=weight)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.clip is not None:  # optimizer.clip_grad_norm: on the unscaled gradients' global L2 norm
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    return loss.detach()


def _train_epoch(run: _Run, data: _Data, epoch: int, progress: Progress | None, pool: ThreadPoolExecutor) -> float:
    """One epoch of training (from a mid-epoch checkpoint's step when resumed there); returns the mean loss."""
    config = data.config
    run.model.train()
    first, total = run.resume_step, run.resume_loss
    run.resume_step, run.resume_loss = 0, 0.0
    last = run.history[-1].validation.mean_iou if run.history else None
    every, started = config.checkpoint_every_steps, time.perf_counter()
    for step, batch in enumerate(_batches(data, epoch, run.steps, pool, first), start=first + 1):
        lr = float(run.optimizer.param_groups[0]["lr"])
        value = float(_train_step(run, *batch))
        if not math.isfinite(value) and not run.amp:
            raise ConfigError(f"the loss became {value} at epoch {epoch} step {step}; lower optimizer.lr "
                              f"(now {config.optimizer.lr}) or check the labels")
        total += value
        if every is not None and step % every == 0 and step < run.steps:
            seconds = run.resume_seconds + time.perf_counter() - started
            _save_checkpoint(config.output / CHECKPOINT, run, data, partial=(step, total, seconds))
        if progress is not None:
            progress(TrainProgress("train", epoch, config.epochs, step, run.steps, total / step, last, lr=lr))
    return total / run.steps


def _validate(run: _Run, data: _Data) -> Metrics:
    model = data.config.model
    things = [k for k, c in enumerate(model.classes) if c.kind == "thing"]
    accumulator = accumulator_for(model.class_names, things, model.output)
    return evaluate_chips(run.model, data.val_images, data.val_labels, accumulator, device=run.device,
                          batch_size=data.config.batch_size, amp=run.amp)


def _export(config: TrainConfig, run: _Run, data: _Data, command: str | None) -> TrainResult:
    epoch = run.best_epoch if config.export == "best" and run.best_state is not None else run.epoch
    state = run.best_state if epoch == run.best_epoch and run.best_state is not None else _cpu_state(run.model)
    validation = next(r.validation for r in run.history if r.epoch == epoch)
    spec = validate_contract(package_contract(config, data.normalization, config.model.description, data.target))
    test, test_text = None, ""
    if config.test is not None and not config.test.empty:
        sources = build_sources(config.test, config.model, data.target)
        try:
            test_text = _test_text(config, sources)
            test = evaluate_sliding_window(build_network(spec, state), spec, sources, device=config.device,
                                           batch_size=config.batch_size,  # volumes: 256³ chunks, not whole
                                           chunk=256 if config.model.spatial_dims == 3 else 2048)
        finally:
            for source in sources:
                source.close()
    quality = _quality_sentence(validation, epoch, test, test_text)
    description = f"{config.model.description.strip()} {quality}".strip()
    contract = package_contract(config, data.normalization, description, data.target)
    spec = validate_contract(contract)
    kinds = [c.kind for c in spec.classes]
    sections = {
        "Training data": f"Training chips from:\n{_describe(data.sources)}\n\nValidation: {data.val_description}."
        + (f"\n\nModel grid: voxel spacing (dz, dy, dx) {list(data.target.spacing)} mm ({data.target.origin}), "
           f"orientation {data.target.orientation}; every NIfTI volume is resampled to it (images linearly, labels "
           "by nearest neighbour), as tile-infer does." if data.target is not None else ""),
        "Training": _training_section(config, run, data, command),
        "Measured quality": f"Validation chips, exported weights (epoch {epoch}):\n\n{metrics_table(validation, kinds)}"
        + (f"\n\nSliding window (tile {spec.tile_shape}, overlap {spec.overlap}, gaussian blending, as tile-infer "
           f"runs it) on {test_text}:\n\n{metrics_table(test, kinds)}" if test is not None else ""),
    }
    package = write_package(config.package_dir, contract, state, readme_text(spec, sections))
    return TrainResult(package, config.output / CHECKPOINT, tuple(run.history), epoch, validation, test,
                       str(run.device), run.stopped_early, tuple(data.notes))


# --------------------------------------------------------------------------- entry point


def _epoch(run: _Run, data: _Data, epoch: int, progress: Progress | None, pool: ThreadPoolExecutor) -> EpochRecord:
    started = time.perf_counter() - run.resume_seconds  # the part trained before a mid-epoch resume counts
    loss = _train_epoch(run, data, epoch, progress, pool)
    run.resume_seconds = 0.0
    trained = time.perf_counter() - started
    metrics = _validate(run, data)
    record = EpochRecord(epoch, loss, float(run.scheduler.get_last_lr()[0]), metrics, trained,
                         time.perf_counter() - started)
    run.epoch = epoch
    run.history.append(record)
    score = -math.inf if math.isnan(metrics.mean_iou) else metrics.mean_iou
    if score > run.best_metric or run.best_state is None:
        run.best_metric, run.best_epoch, run.best_state = score, epoch, _cpu_state(run.model)
    if progress is not None:
        progress(TrainProgress("validate", epoch, data.config.epochs, run.steps, run.steps, loss, metrics.mean_iou,
                               record.seconds))
    return record


def _network(config: TrainConfig) -> nn.Module:
    """The configured network, built only to check a file against it (the run builds its own, seeded)."""
    arch = config.model.architecture
    return build_architecture(arch.name, spatial_dims=config.model.spatial_dims, in_channels=len(config.model.bands),
                              out_channels=output_channels(config.model.output, len(config.model.classes)),
                              **arch.args)


def train(config: TrainConfig, *, progress: Progress | None = None, command: str | None = None
          ) -> TrainResult | InstanceTrainResult:
    """Train the configured model and write its model package.

    Parameters
    ----------
    config : TrainConfig
        The validated configuration (see :mod:`segflow.training.config`); with ``config.resume``
        training continues from ``<config.output>/checkpoint.pt``.
    progress : callable, optional
        Called with a :class:`TrainProgress` after every training step and every validation.
    command : str, optional
        The command line that started the run, recorded in the package README.

    Returns
    -------
    TrainResult or InstanceTrainResult
        Package path, history (time per epoch included), validation and test metrics; a Mask R-CNN
        (``model.architecture.name: maskrcnn``) is trained by :func:`~segflow.training.instance_loop.train_instances`.

    Raises
    ------
    ConfigError, InputError, OutputError, DeviceError
        One-line messages naming the bad value and how to fix it.
    """
    if is_instance_model(config):
        return train_instances(config, progress=progress, command=command)
    device = resolve_device(config.device)
    _build_loss(config)  # a loss that does not fit the model's outputs is refused before any data is read
    try:
        config.output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {config.output}: {exc.strerror or exc}") from None
    state = _load_checkpoint(config) if config.resume else None
    init = load_init(config) if config.init is not None and state is None else None
    normalization = Normalization.model_validate(state["normalization"]) if state is not None else None
    if state is None and config.model.encoder_weights is not None:  # refused before any data is read
        load_encoder_weights(_network(config), config.model.encoder_weights)
    data = _prepare_data(config, normalization or (init.normalization if init is not None else None))
    try:
        run = _build_run(config, device, config.chips_per_epoch // config.batch_size,
                         span=ScheduleSpan.from_dict(state["schedule"]) if state is not None else None,
                         class_weights=data.class_weights)
        if state is not None:
            _restore(run, state)
        if init is not None:
            note = apply_init(run.model, init, config)
            data.notes += [note] if note else []
        if state is None and config.model.encoder_weights is not None:  # a new run starts from ImageNet weights
            load_encoder_weights(run.model, config.model.encoder_weights)
        checkpoint = config.output / CHECKPOINT
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segflow-chips") as pool:
            for epoch in range(run.epoch + 1, config.epochs + 1):
                if should_stop(run.history, config.early_stopping):
                    break
                _epoch(run, data, epoch, progress, pool)
                _save_checkpoint(checkpoint, run, data)
        if run.epoch < config.epochs and should_stop(run.history, config.early_stopping):
            run.stopped_early = run.epoch
        if not run.history:
            raise ConfigError(f"nothing to export: the checkpoint has 0 epochs and epochs={config.epochs}")
        return _export(config, run, data, command)
    finally:
        data.close()
