"""Training checkpoints: save, load (checked against the config), restore, and the config fingerprint.

``<output>/checkpoint.pt`` holds the weights, optimiser, schedule, scaler and torch RNG states,
the best weights so far, the normalisation, the epoch history, the schedule's planned length
(:class:`~segflow.training.schedule.ScheduleSpan`: ``--resume`` with more epochs continues the
original schedule, then holds its final learning rate), the class weights used and the config's
fingerprint (every key but those that may change on resumption, :data:`_RESUMABLE`);
``history.json`` next to it holds the history, the run's warnings, the class weights and the
early-stopping state as JSON. Both are written atomically after every epoch and, with
``checkpoint_every_steps: N``, every N steps inside an epoch: such a mid-epoch checkpoint also
records the steps done and their summed loss (``partial``), and ``--resume`` continues with the
next step. Chip ``i`` of epoch ``e`` depends only on ``(seed, e, i)`` and the torch RNG state is
saved, so a run killed and resumed gives, on the CPU, bit-identical weights to an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..io.atomic import atomic_path, atomic_write_text
from ..models.writer import plain
from .config import TrainConfig
from .data import _Data
from .run import EpochRecord, _Run
from .schedule import ScheduleSpan, check_extension
from .stopping import epochs_since_improvement, should_stop

__all__ = ["CHECKPOINT", "HISTORY"]

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"
_FORMAT = 2  # 2: schedule span, mid-epoch position and class weights recorded
_WRITE_HINT = "check the output directory"
# Config keys that may change between a run and its resumption.
_RESUMABLE = {"epochs", "device", "amp", "output", "package", "resume", "test", "export", "checkpoint_every_steps",
              "early_stopping"}


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _fingerprint(config: TrainConfig) -> dict[str, Any]:
    fingerprint: dict[str, Any] = plain(config.model_dump(mode="json", exclude=_RESUMABLE))
    # keys added after checkpoints existed are left out at their defaults, so those checkpoints still resume
    output = fingerprint["model"].get("output")
    if isinstance(output, dict) and "score_threshold" in output and output["score_threshold"] is None:
        del output["score_threshold"]  # added with instance outputs
    if output == {"activation": "softmax", "multilabel": False, "thresholds": None}:
        del fingerprint["model"]["output"]
    if fingerprint.get("border_weights") is None:
        fingerprint.pop("border_weights", None)
    if fingerprint.get("optimizer", {}).get("momentum", 0) is None:
        del fingerprint["optimizer"]["momentum"]
    if fingerprint["model"].get("encoder_weights") is None:
        fingerprint["model"].pop("encoder_weights", None)
    return fingerprint


def _save_checkpoint(path: Path, run: _Run, data: _Data, partial: tuple[int, float, float] | None = None,
                     records: list[dict[str, Any]] | None = None) -> None:
    """Write the checkpoint and ``history.json``; ``partial`` = (steps done, their summed loss, seconds) of the
    epoch after ``run.epoch`` for a mid-epoch checkpoint; ``records``: the epoch history as dicts when it is
    not ``run.history`` (instance training keeps records of its own metrics)."""
    records = [r.to_dict() for r in run.history] if records is None else records
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
        "history": records,
        "config": _fingerprint(data.config),
        "schedule": run.span.to_dict() if run.span is not None else None,
        "partial": None if partial is None else {"step": partial[0], "loss": partial[1], "seconds": partial[2]},
        "class_weights": list(run.class_weight_values) if run.class_weight_values is not None else None,
    }
    with atomic_path(path, hint=_WRITE_HINT) as tmp:
        torch.save(state, tmp)
    rule = data.config.early_stopping
    history: dict[str, Any] = {"epochs": records, "best_epoch": run.best_epoch}
    if partial is not None:
        history["partial_epoch"] = {"epoch": run.epoch + 1, "steps_done": partial[0], "steps": run.steps}
    if run.class_weight_values is not None:
        history["class_weights"] = list(run.class_weight_values)
    if rule is not None:
        history["early_stopping"] = {"patience": rule.patience, "min_delta": rule.min_delta, "epochs_without_gain":
                                     epochs_since_improvement([r.validation.mean_iou for r in run.history],
                                                              rule.min_delta),
                                     "stopped": should_stop(run.history, rule)}
    if run.span is not None:
        history["schedule"] = run.span.to_dict()
    history["warnings"] = list(data.notes)
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
    if isinstance(state, dict) and isinstance(state.get("format"), int) and state["format"] < _FORMAT:
        raise InputError(f"{path} was written by an older segflow (checkpoint format {state['format']}, this one "
                         f"reads {_FORMAT}: it records no schedule length); train without --resume")
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise InputError(f"{path} is not a segflow training checkpoint (format {_FORMAT}); train without --resume")
    saved, current = state["config"], _fingerprint(config)
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if changed:
        raise ConfigError(
            f"--resume: the config differs from the checkpoint's in {', '.join(changed)}; only "
            f"{', '.join(sorted(_RESUMABLE - {'resume'}))} may change. Restore those settings or train without --resume"
        )
    check_extension(ScheduleSpan.from_dict(state["schedule"]), config.epochs)
    return state


def _restore(run: _Run, state: dict[str, Any], *, history: bool = True) -> None:
    """Put the checkpoint's state into ``run`` (its epoch history too, unless ``history`` is False)."""
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
    if history:
        run.history = [EpochRecord.from_dict(r) for r in state["history"]]
    partial = state.get("partial")
    if partial is not None:  # a mid-epoch checkpoint: continue with the next step of epoch ``epoch + 1``
        run.resume_step, run.resume_loss = int(partial["step"]), float(partial["loss"])
        run.resume_seconds = float(partial["seconds"])
