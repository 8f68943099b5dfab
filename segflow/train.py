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
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch import nn

from .augment import AugmentParams, augment
from .chips import IGNORE, ChipSampler, ChipSource, build_sources, grid_cells, hold_out
from .errors import ConfigError, InputError, OutputError
from .io.atomic import atomic_path, atomic_write_text
from .losses import build_loss
from .models.arch import build_architecture
from .models.package import Normalization
from .nifti_chips import VolumeTarget, target_of
from .normalize import normalize_array
from .predict import resolve_device
from .train_config import TrainConfig
from .train_eval import Metrics, MetricsAccumulator, evaluate_chips, evaluate_sliding_window
from .train_package import (
    build_network,
    metrics_table,
    package_contract,
    plain,
    readme_text,
    validate_contract,
    write_package,
)

__all__ = ["CHECKPOINT", "EpochRecord", "TrainProgress", "TrainResult", "train"]

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"
_FORMAT = 1
_STATS_CHIPS = 32
_WRITE_HINT = "check the output directory"
# Config keys that may change between a run and its resumption.
_RESUMABLE = {"epochs", "device", "amp", "output", "package", "resume", "test", "export"}


@dataclass(frozen=True)
class TrainProgress:
    """Where training stands; passed to the ``progress`` callback after every step and validation.

    ``phase`` is ``"train"`` after a training step and ``"validate"`` after an epoch's
    validation; ``loss`` is the running mean loss of the epoch; ``val_miou`` the latest
    validation mean IoU (None before the first validation).
    """

    phase: Literal["train", "validate"]
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    val_miou: float | None
    seconds: float = 0.0


Progress = Callable[[TrainProgress], None]


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
    """

    package_dir: Path
    checkpoint: Path
    history: tuple[EpochRecord, ...]
    exported_epoch: int
    validation: Metrics
    test: Metrics | None
    device: str

    @property
    def seconds_per_epoch(self) -> float:
        """Mean wall time of an epoch (training and validation)."""
        return float(np.mean([r.seconds for r in self.history])) if self.history else math.nan

    def summary(self) -> str:
        test = f" | test {self.test.summary()}" if self.test is not None else ""
        return (f"wrote {self.package_dir} | {len(self.history)} epochs, {self.seconds_per_epoch:.1f} s/epoch on "
                f"{self.device} | validation (epoch {self.exported_epoch}) {self.validation.summary()}{test}")


# --------------------------------------------------------------------------- data


@dataclass
class _Data:
    """Training sources, sampler, normalisation and the pre-read validation chips."""

    config: TrainConfig
    sources: list[ChipSource]
    sampler: ChipSampler
    normalization: Normalization
    val_images: torch.Tensor
    val_labels: torch.Tensor
    val_sources: list[ChipSource]
    val_description: str
    augment: AugmentParams = field(default_factory=AugmentParams)
    target: VolumeTarget | None = None  # the model grid NIfTI pairs are seen on

    def chip(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Training chip ``index`` of ``epoch``: normalised, augmented image and labels."""
        rng = np.random.default_rng([self.config.seed, 1, epoch, index])
        source, start = self.sampler.sample(rng)
        chip = self.sources[source].read(start, self.config.model.chip_shape)
        image = np.where(chip.valid, normalize_array(chip.image, self.normalization), np.float32(0))
        return augment(image, chip.labels, rng, self.augment)

    def batch(self, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.config.batch_size
        pairs = [self.chip(epoch, step * size + k) for k in range(size)]
        images = torch.from_numpy(np.stack([p[0] for p in pairs]))
        labels = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
        return images, labels

    def close(self) -> None:
        for source in [*self.sources, *self.val_sources]:
            source.close()


def _compute_stats(sources: list[ChipSource], sampler: ChipSampler, chip: tuple[int, ...], seed: int) -> Normalization:
    """Per-band mean and std over the valid pixels of a fixed sample of training chips."""
    total = count = squares = None
    for i in range(_STATS_CHIPS):
        source, start = sampler.sample(np.random.default_rng([seed, 3, i]))
        sample = sources[source].read(start, chip)
        values = sample.image[:, sample.valid].astype(np.float64)
        total = values.sum(axis=1) if total is None else total + values.sum(axis=1)
        squares = (values**2).sum(axis=1) if squares is None else squares + (values**2).sum(axis=1)
        count = values.shape[1] if count is None else count + values.shape[1]
    assert total is not None and squares is not None and count is not None
    if count == 0:
        raise InputError("the sampled training chips hold no valid pixel; check the images' nodata and masks")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return Normalization(mode="meanstd", mean=[round(float(m), 4) for m in mean],
                         std=[round(max(float(s), 1e-3), 4) for s in std])


def _configured_normalization(config: TrainConfig) -> Normalization | None:
    norm = config.model.normalization
    if norm.mode == "meanstd" and norm.mean is None:
        return None
    if norm.mode == "meanstd":
        return Normalization(mode="meanstd", mean=norm.mean, std=norm.std)
    if norm.mode == "scale":
        return Normalization(mode="scale", scale=norm.scale, offset=norm.offset)
    if norm.mode == "ct_window":
        return Normalization(mode="ct_window", center=norm.center, width=norm.width)
    return Normalization(mode="none")


def _validation_cells(config: TrainConfig, sources: list[ChipSource], target: VolumeTarget | None
                      ) -> tuple[list[ChipSource], Any, list[Any]]:
    """Validation sources, the training hold-out (or None) and the validation cells ``(source, start)``."""
    chip = config.model.chip_shape
    rng = np.random.default_rng([config.seed, 2])
    if config.validation.empty:
        holdout = hold_out(sources, chip, config.validation.fraction, rng)
        val_sources, cells = sources, holdout.cells()
    else:
        holdout = None
        val_sources = build_sources(config.validation, config.model, target)
        cells = []
        for i, source in enumerate(val_sources):
            for idx in np.ndindex(*grid_cells(source.spatial_shape, chip)):
                cells.append((i, tuple(k * c for k, c in zip(idx, chip, strict=True))))
    if len(cells) > config.validation.chips:
        keep = np.sort(rng.choice(len(cells), size=config.validation.chips, replace=False))
        cells = [cells[k] for k in keep]
    return val_sources, holdout, cells


def _describe(sources: list[ChipSource], limit: int = 6) -> str:
    lines = [f"- {s.description}" for s in sources[:limit]]
    if len(sources) > limit:
        lines.append(f"- ... and {len(sources) - limit} more")
    return "\n".join(lines)


def _prepare_data(config: TrainConfig, normalization: Normalization | None) -> _Data:
    sources = build_sources(config.data, config.model)
    target = target_of(sources)
    val_sources, holdout, cells = _validation_cells(config, sources, target)
    target = target or target_of(val_sources)
    try:
        _check_rotations(config, target)
        sampler = ChipSampler(sources, config.model.chip_shape, holdout, foreground=config.sampling.foreground)
        norm = normalization or _configured_normalization(config)
        if norm is None:
            norm = _compute_stats(sources, sampler, config.model.chip_shape, config.seed)
        images, labels = [], []
        for i, start in cells:
            chip = val_sources[i].read(start, config.model.chip_shape)
            images.append(np.where(chip.valid, normalize_array(chip.image, norm), np.float32(0)))
            labels.append(chip.labels)
    except BaseException:
        for source in [*sources, *val_sources]:
            source.close()
        raise
    where = (f"{len(cells)} chips held out from the training data ({config.validation.fraction:.0%} of the "
             "chip grid, never sampled for training)" if holdout is not None
             else f"{len(cells)} chips from separate validation data:\n{_describe(val_sources)}")
    a = config.augment
    return _Data(config, sources, sampler, norm, torch.from_numpy(np.stack(images)),
                 torch.from_numpy(np.stack(labels)), val_sources if holdout is None else [], where,
                 AugmentParams(flips=a.flips, rot90=a.rot90, gain=a.gain, offset=a.offset, noise=a.noise), target)


def _check_rotations(config: TrainConfig, target: VolumeTarget | None) -> None:
    """Refuse 90° in-plane rotations on a model grid whose voxels are not square in (y, x): they would distort."""
    if target is None or not config.augment.rot90:
        return
    dy, dx = target.spacing[1], target.spacing[2]
    if abs(dy - dx) > 0.01 * max(dy, dx):
        raise ConfigError(f"augment.rot90 would turn the model grid's {dy:g} x {dx:g} mm (y, x) voxels by 90 degrees "
                          "and distort the anatomy; set augment.rot90: false or a model.spacing with dy == dx")


def _batches(data: _Data, epoch: int, steps: int, pool: ThreadPoolExecutor) -> Iterator[tuple[torch.Tensor, ...]]:
    """The epoch's batches, the next one prepared in ``pool`` while the current one trains."""
    pending: Future[tuple[torch.Tensor, torch.Tensor]] = pool.submit(data.batch, epoch, 0)
    for step in range(steps):
        batch = pending.result()
        if step + 1 < steps:
            pending = pool.submit(data.batch, epoch, step + 1)
        yield batch


# --------------------------------------------------------------------------- model and optimisation


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


def _train_step(run: _Run, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    x = images.to(run.device, non_blocking=True)
    y = labels.to(run.device, non_blocking=True)
    weight = run.class_weights[y] if run.class_weights is not None else None
    with torch.autocast(device_type=run.device.type, dtype=torch.float16, enabled=run.amp):
        loss = run.loss(run.model(x), y, weight=weight)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    return loss.detach()


def _train_epoch(run: _Run, data: _Data, epoch: int, progress: Progress | None, pool: ThreadPoolExecutor) -> float:
    """One epoch of training; returns the mean loss."""
    config = data.config
    run.model.train()
    total = 0.0
    last = run.history[-1].validation.mean_iou if run.history else None
    for step, (images, labels) in enumerate(_batches(data, epoch, run.steps, pool), start=1):
        value = float(_train_step(run, images, labels))
        if not math.isfinite(value) and not run.amp:
            raise ConfigError(f"the loss became {value} at epoch {epoch} step {step}; lower optimizer.lr "
                              f"(now {config.optimizer.lr}) or check the labels")
        total += value
        if progress is not None:
            progress(TrainProgress("train", epoch, config.epochs, step, run.steps, total / step, last))
    return total / run.steps


def _validate(run: _Run, data: _Data) -> Metrics:
    model = data.config.model
    things = [k for k, c in enumerate(model.classes) if c.kind == "thing"]
    accumulator = MetricsAccumulator(model.class_names, things)
    return evaluate_chips(run.model, data.val_images, data.val_labels, accumulator, device=run.device,
                          batch_size=data.config.batch_size, amp=run.amp)


# --------------------------------------------------------------------------- checkpoints


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _fingerprint(config: TrainConfig) -> dict[str, Any]:
    return plain(config.model_dump(mode="json", exclude=_RESUMABLE))


def _save_checkpoint(path: Path, run: _Run, data: _Data) -> None:
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state = {
        "format": _FORMAT,
        "epoch": run.epoch,
        "model": _cpu_state(run.model),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rng,
        "best": {"metric": run.best_metric, "epoch": run.best_epoch, "model": run.best_state},
        "normalization": data.normalization.model_dump(),
        "history": [r.to_dict() for r in run.history],
        "config": _fingerprint(data.config),
    }
    with atomic_path(path, hint=_WRITE_HINT) as tmp:
        torch.save(state, tmp)
    history = {"epochs": [r.to_dict() for r in run.history], "best_epoch": run.best_epoch}
    text = json.dumps(history, indent=2) + "\n"
    atomic_write_text(path.parent / HISTORY, text, hint=_WRITE_HINT)


def _load_checkpoint(config: TrainConfig) -> dict[str, Any]:
    path = config.output / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"--resume: no checkpoint at {path}; run without --resume to start training")
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise InputError(f"checkpoint {path} cannot be read ({str(exc).splitlines()[0]}); "
                         "delete it and train without --resume") from None
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise InputError(f"{path} is not a segflow training checkpoint (format {_FORMAT}); train without --resume")
    saved, current = state["config"], _fingerprint(config)
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if changed:
        raise ConfigError(
            f"--resume: the config differs from the checkpoint's in {', '.join(changed)}; only "
            f"{', '.join(sorted(_RESUMABLE - {'resume'}))} may change. Restore those settings or train without --resume"
        )
    return state


def _restore(run: _Run, state: dict[str, Any]) -> None:
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler.is_enabled() and state["scaler"]:
        run.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    run.epoch = int(state["epoch"])
    run.best_metric = float(state["best"]["metric"])
    run.best_epoch = int(state["best"]["epoch"])
    run.best_state = state["best"]["model"]
    run.history = [EpochRecord.from_dict(r) for r in state["history"]]


# --------------------------------------------------------------------------- export


def _quality_sentence(validation: Metrics, epoch: int, test: Metrics | None, test_text: str) -> str:
    parts = [f"Validation chips (epoch {epoch}): mean IoU {validation.mean_iou:.4f}, "
             f"pixel accuracy {validation.pixel_accuracy:.4f}."]
    if test is not None:
        per_class = ", ".join(f"{n} IoU {i:.4f} Dice {d:.4f}"
                              for n, i, d in zip(test.class_names, test.iou, test.dice, strict=True)
                              if not math.isnan(i))
        parts.append(f"Sliding-window test on {test_text}: mean IoU {test.mean_iou:.4f}, pixel accuracy "
                     f"{test.pixel_accuracy:.4f}; {per_class}.")
    return " ".join(parts)


def _training_section(config: TrainConfig, run: _Run, data: _Data, command: str | None) -> str:
    seconds = [r.seconds for r in run.history]
    timing = (f"median {np.median(seconds):.1f} s per epoch (mean {np.mean(seconds):.1f}, min {min(seconds):.1f}, "
              f"max {max(seconds):.1f}; training and validation), {sum(seconds) / 60:.1f} min in all, on "
              f"{run.device.type} ({torch.get_num_threads()} threads)" if seconds else "no epoch timed")
    loss = config.loss if isinstance(config.loss, str) else json.dumps(config.loss)
    config_yaml = yaml.safe_dump(plain(config.model_dump(mode="json", exclude={"resume"})), sort_keys=False,
                                 width=100, default_flow_style=None)
    return "\n".join([
        f"Command: `{command or 'segflow.train.train(config)'}` (seed {config.seed}).",
        "",
        f"- {config.epochs} epochs x {run.steps} steps of {config.batch_size} chips of "
        f"{'x'.join(map(str, config.model.chip_shape))} {'px' if config.model.spatial_dims == 2 else 'vox'} "
        f"({config.chips_per_epoch} chips per epoch)",
        f"- loss `{loss}`" + (f", class weights {config.class_weights}" if config.class_weights else ""),
        f"- AdamW lr {config.optimizer.lr}, weight decay {config.optimizer.weight_decay}, "
        f"{config.optimizer.schedule} schedule; mixed precision: {'yes' if run.amp else 'no'}",
        f"- augmentation: {config.augment.model_dump()}",
        f"- time: {timing}",
        f"- exported weights: {config.export} (epoch {run.best_epoch if config.export == 'best' else run.epoch})",
        "",
        "| epoch | train loss | val mean IoU | seconds |",
        "| --- | --- | --- | --- |",
        *(f"| {r.epoch} | {r.train_loss:.4f} | {r.validation.mean_iou:.4f} | {r.seconds:.1f} |" for r in run.history),
        "",
        "Resolved configuration:",
        "",
        "```yaml",
        config_yaml.rstrip(),
        "```",
    ])


def _test_text(config: TrainConfig, sources: list[ChipSource]) -> str:
    spec = config.test.synthetic if config.test is not None else None
    if spec is not None and len(sources) == spec.count:
        size = "x".join(str(s) for s in sources[0].spatial_shape)
        seeds = f"seed {spec.seed}" if spec.count == 1 else f"seeds {spec.seed}-{spec.seed + spec.count - 1}"
        kind = spec.kind if spec.count > 1 else spec.kind[:-1]
        return f"{spec.count} fresh synthetic {kind} of {size} ({seeds}, never used in training or validation)"
    return f"{len(sources)} test source(s)"


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
                       str(run.device))


# --------------------------------------------------------------------------- entry point


def _epoch(run: _Run, data: _Data, epoch: int, progress: Progress | None, pool: ThreadPoolExecutor) -> EpochRecord:
    started = time.perf_counter()
    loss = _train_epoch(run, data, epoch, progress, pool)
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


def train(config: TrainConfig, *, progress: Progress | None = None, command: str | None = None) -> TrainResult:
    """Train the configured model and write its model package.

    Parameters
    ----------
    config : TrainConfig
        The validated configuration (see :mod:`segflow.train_config`); with ``config.resume``
        training continues from ``<config.output>/checkpoint.pt``.
    progress : callable, optional
        Called with a :class:`TrainProgress` after every training step and every validation.
    command : str, optional
        The command line that started the run, recorded in the package README.

    Returns
    -------
    TrainResult
        Package path, history (time per epoch included), validation and test metrics.

    Raises
    ------
    ConfigError, InputError, OutputError, DeviceError
        One-line messages naming the bad value and how to fix it.
    """
    device = resolve_device(config.device)
    try:
        config.output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {config.output}: {exc.strerror or exc}") from None
    state = _load_checkpoint(config) if config.resume else None
    normalization = Normalization.model_validate(state["normalization"]) if state is not None else None
    data = _prepare_data(config, normalization)
    try:
        run = _build_run(config, device, config.chips_per_epoch // config.batch_size)
        if state is not None:
            _restore(run, state)
        checkpoint = config.output / CHECKPOINT
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segflow-chips") as pool:
            for epoch in range(run.epoch + 1, config.epochs + 1):
                _epoch(run, data, epoch, progress, pool)
                _save_checkpoint(checkpoint, run, data)
        if not run.history:
            raise ConfigError(f"nothing to export: the checkpoint has 0 epochs and epochs={config.epochs}")
        return _export(config, run, data, command)
    finally:
        data.close()
