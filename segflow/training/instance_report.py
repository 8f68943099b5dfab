"""The README's training section of a Mask R-CNN package: command, settings, time and per-epoch table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml

from ..models.writer import plain
from .config import TrainConfig
from .run import _Run, optimizer_text

if TYPE_CHECKING:
    from .instance_loop import InstanceEpoch

__all__ = ["training_text"]


def training_text(config: TrainConfig, run: _Run, history: Sequence[InstanceEpoch], notes: Sequence[str],
                  command: str | None) -> str:
    """Markdown: how the model was trained (settings, timing, one row per epoch, resolved configuration)."""
    seconds = [r.seconds for r in history]
    timing = (f"median {np.median(seconds):.1f} s per epoch ({sum(seconds) / 60:.1f} min in all, training and "
              f"validation) on {run.device.type} ({torch.get_num_threads()} threads)" if seconds else "no epoch timed")
    config_yaml = yaml.safe_dump(plain(config.model_dump(mode="json", exclude={"resume"})), sort_keys=False,
                                 width=100, default_flow_style=None)
    chip = "x".join(map(str, config.model.chip_shape))
    return "\n".join([
        f"Command: `{command or 'segflow.training.loop.train(config)'}` (seed {config.seed}).",
        "",
        f"- {config.epochs} epochs x {run.steps} steps of {config.batch_size} chips of {chip} px "
        f"({config.chips_per_epoch} chips per epoch; {config.sampling.fraction(2):.0%} centred on an object class)",
        "- loss: the sum of Mask R-CNN's losses (RPN objectness and box, classifier, box regression, mask); "
        "targets from instance ids",
        f"- {optimizer_text(config)}, "
        + (run.span.describe(config.epochs) if run.span is not None else f"{config.optimizer.schedule} schedule")
        + (f", gradients clipped to L2 norm {config.optimizer.clip_grad_norm}" if config.optimizer.clip_grad_norm
           else "") + "; float32",
        *(f"- warning: {note}" for note in notes),
        f"- augmentation: {config.augment.model_dump()}",
        f"- time: {timing}",
        f"- exported weights: {config.export} by validation mask AP (epoch "
        f"{run.best_epoch if config.export == 'best' else run.epoch})",
        "",
        "| epoch | train loss | val mask AP | val AP50 | val object F1 | seconds |",
        "| --- | --- | --- | --- | --- | --- |",
        *(f"| {r.epoch} | {r.train_loss:.4f} | {r.validation.mask_ap:.4f} | {r.validation.ap50:.4f} | "
          f"{r.validation.f1:.4f} | {r.seconds:.1f} |" for r in history),
        "",
        "Resolved configuration:",
        "",
        "```yaml",
        config_yaml.rstrip(),
        "```",
    ])
