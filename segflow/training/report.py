"""The text a trained package's README says about its training: quality, data, run and configuration.

Markdown sections for :func:`segflow.models.writer.readme_text`: the measured quality in one
sentence (appended to the package description), the training section (command, settings, time,
per-epoch table, resolved configuration) and the wording for the test sources.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch
import yaml

from ..models.writer import plain
from .config import TrainConfig
from .data import _Data
from .evaluation import Metrics
from .run import _Run, optimizer_text
from .sources import ChipSource


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
        f"Command: `{command or 'segflow.training.loop.train(config)'}` (seed {config.seed}).",
        "",
        f"- {config.epochs} epochs x {run.steps} steps of {config.batch_size} chips of "
        f"{'x'.join(map(str, config.model.chip_shape))} {'px' if config.model.spatial_dims == 2 else 'vox'} "
        f"({config.chips_per_epoch} chips per epoch)",
        f"- loss `{loss}`" + (f", class weights {list(run.class_weight_values)}"
                              + (" (balanced: median frequency over the sampled training chips)"
                                 if config.class_weights == "balanced" else "")
                              if run.class_weight_values is not None else "")
        + (f", U-Net border weights from instances (w0 {config.border_weights.w0}, sigma "
           f"{config.border_weights.sigma} px)" if config.border_weights is not None else ""),
        f"- {optimizer_text(config)}, "
        + (run.span.describe(config.epochs) if run.span is not None else f"{config.optimizer.schedule} schedule")
        + (f", gradients clipped to L2 norm {config.optimizer.clip_grad_norm}" if config.optimizer.clip_grad_norm
           else "") + f"; mixed precision: {'yes' if run.amp else 'no'}",
        *([f"- fine-tuned from `{config.init}`"] if config.init else []),
        *([f"- early stopping (patience {config.early_stopping.patience}, min_delta {config.early_stopping.min_delta} "
           f"on validation mean IoU): " + (f"stopped after epoch {run.stopped_early}" if run.stopped_early is not None
                                           else "ran every epoch")] if config.early_stopping else []),
        *(f"- warning: {note}" for note in data.notes),
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
