"""The data of a training run: chip sources, sampler, normalisation, validation chips and batches.

:func:`_prepare_data` builds the training sources, holds out (or builds) the validation chips and
fixes the normalisation (given, restored from a checkpoint, or the mean/std of a fixed sample of
training chips). Chip ``i`` of epoch ``e`` is drawn and augmented with its own generator
``numpy.random.default_rng([seed, 1, e, i])``, so the data needs no saved state. Images are
``(C, *chip)`` float32 (normalised; invalid pixels 0), labels ``chip`` (``(Y, X)`` or ``(Z, Y,
X)``; a multi-label model's ``(K, Y, X)`` planes), batches stack them along a first axis N; with
``border_weights`` a batch also holds each chip's border term ``(N, *chip)`` float32
(:mod:`~segflow.training.border`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, InputError, SegflowWarning
from ..models.package import Normalization
from ..normalize import normalize_array
from .augment import AugmentParams, augment
from .balance import ClassCounts, median_frequency_weights
from .border import check_instances, chip_border
from .chips import build_sources
from .config import TrainConfig
from .nifti import VolumeTarget, target_of
from .output_config import BorderWeightsConfig
from .sampling import ChipSampler, grid_cells, hold_out
from .sources import ChipSource
from .split_check import validation_warnings

_STATS_CHIPS = 32
_INSTANCE_USER = ("architecture maskrcnn needs", "train a semantic architecture")


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
    border: BorderWeightsConfig | None = None  # border weights from instances, when configured
    class_counts: ClassCounts | None = None  # over the sampled training chips (segflow.training.balance)
    class_weights: list[float] | None = None  # class_weights as used: the list, or balanced's resolved
    notes: list[str] = field(default_factory=list)  # one-line warnings of the run (history.json "warnings")
    instances: bool = False  # chips carry instance ids (Mask R-CNN): batches hold (images, labels, ids)
    val_ids: torch.Tensor | None = None  # instance ids (N, Y, X) int64 of the validation chips, with instances

    def chip(self, epoch: int, index: int) -> tuple[np.ndarray, ...]:
        """Training chip ``index`` of ``epoch``: normalised, augmented image and labels (and border term)."""
        rng = np.random.default_rng([self.config.seed, 1, epoch, index])
        source, start = self.sampler.sample(rng)
        shape = self.config.model.chip_shape
        chip = self.sources[source].read(start, shape)
        image = np.where(chip.valid, normalize_array(chip.image, self.normalization), np.float32(0))
        if self.instances:  # ids move with the labels
            ids = self.sources[source].read_instances(start, shape)
            image, both = augment(image, np.stack([chip.labels.astype(np.int64), ids]), rng, self.augment)
            return image, both[0].astype(np.uint8), both[1]
        if self.border is None:
            return augment(image, chip.labels, rng, self.augment)
        term = chip_border(self.sources[source], start, shape, self.border)
        stack = np.concatenate([chip.labels.reshape(-1, *shape).astype(np.float32), term[None]])
        image, stack = augment(image, stack, rng, self.augment)  # labels and term move together
        return image, stack[:-1].astype(np.uint8).reshape(chip.labels.shape), stack[-1]

    def batch(self, epoch: int, step: int) -> tuple[torch.Tensor, ...]:
        """Images ``(N, C, *chip)``, labels ``(N, [K,] *chip)`` int64 and, with border weights, ``(N, *chip)``."""
        size = self.config.batch_size
        pairs = [self.chip(epoch, step * size + k) for k in range(size)]
        images = torch.from_numpy(np.stack([p[0] for p in pairs]))
        labels = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
        if self.instances:
            return images, labels, torch.from_numpy(np.stack([p[2] for p in pairs]))
        if self.border is None:
            return images, labels
        return images, labels, torch.from_numpy(np.stack([p[2] for p in pairs]))

    def close(self) -> None:
        for source in [*self.sources, *self.val_sources]:
            source.close()


def _sample_chips(sources: list[ChipSource], sampler: ChipSampler, chip: tuple[int, ...], seed: int,
                  num_classes: int, stats: bool) -> tuple[Normalization | None, ClassCounts]:
    """Over a fixed sample of training chips: the class counts, and (``stats``) the per-band mean and
    std of the valid pixels."""
    counts = ClassCounts(num_classes)
    total = count = squares = None
    for i in range(_STATS_CHIPS):
        source, start = sampler.sample(np.random.default_rng([seed, 3, i]))
        sample = sources[source].read(start, chip)
        counts.add(sample.labels, len(chip))
        if not stats:
            continue
        values = sample.image[:, sample.valid].astype(np.float64)
        total = values.sum(axis=1) if total is None else total + values.sum(axis=1)
        squares = (values**2).sum(axis=1) if squares is None else squares + (values**2).sum(axis=1)
        count = values.shape[1] if count is None else count + values.shape[1]
    if not stats:
        return None, counts
    assert total is not None and squares is not None and count is not None
    if count == 0:
        raise InputError("the sampled training chips hold no valid pixel; check the images' nodata and masks")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return Normalization(mode="meanstd", mean=[round(float(m), 4) for m in mean],
                         std=[round(max(float(s), 1e-3), 4) for s in std]), counts


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


def _prepare_data(config: TrainConfig, normalization: Normalization | None, *, instances: bool = False) -> _Data:
    """The run's data; with ``instances`` every source must have instance ids, which chips then carry."""
    sources = build_sources(config.data, config.model)
    if config.border_weights is not None or instances:
        try:
            check_instances(sources, *(_INSTANCE_USER if instances else ()))
        except BaseException:
            for source in sources:
                source.close()
            raise
    target = target_of(sources)
    val_sources, holdout, cells = _validation_cells(config, sources, target)
    target = target or target_of(val_sources)
    try:
        if instances:
            check_instances(val_sources, *_INSTANCE_USER)
        _check_rotations(config, target)
        sampler = ChipSampler(sources, config.model.chip_shape, holdout,
                              foreground=config.sampling.fraction(config.model.spatial_dims))
        norm = normalization or _configured_normalization(config)
        stats, counts = _sample_chips(sources, sampler, config.model.chip_shape, config.seed,
                                      len(config.model.classes), stats=norm is None)
        norm = norm or stats
        assert norm is not None
        images, labels, ids = [], [], []
        for i, start in cells:
            chip = val_sources[i].read(start, config.model.chip_shape)
            images.append(np.where(chip.valid, normalize_array(chip.image, norm), np.float32(0)))
            labels.append(chip.labels)
            if instances:
                ids.append(val_sources[i].read_instances(start, config.model.chip_shape))
    except BaseException:
        for source in [*sources, *val_sources]:
            source.close()
        raise
    where = (f"{len(cells)} chips held out from the training data ({config.validation.fraction:.0%} of the "
             "chip grid, never sampled for training)" if holdout is not None
             else f"{len(cells)} chips from separate validation data:\n{_describe(val_sources)}")
    a = config.augment
    data = _Data(config, sources, sampler, norm, torch.from_numpy(np.stack(images)),
                 torch.from_numpy(np.stack(labels)), val_sources if holdout is None else [], where,
                 AugmentParams(flips=a.flips, rot90=a.rot90, gain=a.gain, offset=a.offset, noise=a.noise), target,
                 config.border_weights, class_counts=counts, instances=instances,
                 val_ids=torch.from_numpy(np.stack(ids)) if ids else None)
    _check_split(data, labels, holdout)
    return data


def _check_split(data: _Data, labels: list[np.ndarray], holdout: Any) -> None:
    """Resolve ``class_weights: balanced`` and warn about a validation split too small to mean something."""
    config, counts = data.config, data.class_counts
    assert counts is not None
    names = config.model.class_names
    if config.class_weights == "balanced":
        data.class_weights, absent = median_frequency_weights(counts)
        if absent:
            data.notes.append(f"class_weights: balanced: {', '.join(repr(names[k]) for k in absent)} never appear in "
                              f"the {counts.chips} sampled training chips; weighted {max(data.class_weights):g} (the "
                              "largest weight); give class_weights explicitly if that is wrong")
    elif isinstance(config.class_weights, list):
        data.class_weights = list(config.class_weights)
    val_counts = ClassCounts(len(names))
    for chip_labels in labels:
        val_counts.add(chip_labels, config.model.spatial_dims)
    train_pixels = sum(math.prod(s.spatial_shape) for s in data.sources)
    if holdout is not None:
        train_pixels -= sum(int(m.sum()) for m in holdout.masks) * math.prod(config.model.chip_shape)
    data.notes += validation_warnings(names, counts, val_counts, train_pixels=train_pixels,
                                      held_out=holdout is not None, chips_limit=config.validation.chips,
                                      fraction=config.validation.fraction)
    for note in data.notes:
        warnings.warn(note, SegflowWarning, stacklevel=4)


def _check_rotations(config: TrainConfig, target: VolumeTarget | None) -> None:
    """Refuse 90° in-plane rotations on a model grid whose voxels are not square in (y, x): they would distort."""
    if target is None or not config.augment.rot90:
        return
    dy, dx = target.spacing[1], target.spacing[2]
    if abs(dy - dx) > 0.01 * max(dy, dx):
        raise ConfigError(f"augment.rot90 would turn the model grid's {dy:g} x {dx:g} mm (y, x) voxels by 90 degrees "
                          "and distort the anatomy; set augment.rot90: false or a model.spacing with dy == dx")


def _batches(data: _Data, epoch: int, steps: int, pool: ThreadPoolExecutor,
             first: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
    """The epoch's batches from step ``first`` (0-based) on, the next one prepared in ``pool`` while the
    current one trains."""
    pending: Future[tuple[torch.Tensor, ...]] = pool.submit(data.batch, epoch, first)
    for step in range(first, steps):
        batch = pending.result()
        if step + 1 < steps:
            pending = pool.submit(data.batch, epoch, step + 1)
        yield batch
