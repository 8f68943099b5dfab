"""Training checkpoints: save, load (checked against the config), restore, and the config fingerprint.

``<output>/checkpoint.pt`` holds the weights, optimiser, schedule, scaler and torch RNG states,
the best weights so far, the normalisation, the epoch history and the config's fingerprint
(every key but those that may change on resumption, :data:`_RESUMABLE`); ``history.json`` next
to it holds the history as JSON. Both are written atomically after every epoch.
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

__all__ = ["CHECKPOINT", "HISTORY"]

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"
_FORMAT = 1
_WRITE_HINT = "check the output directory"
# Config keys that may change between a run and its resumption.
_RESUMABLE = {"epochs", "device", "amp", "output", "package", "resume", "test", "export"}


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
