"""Learning-rate schedules of ``segflow train`` and what happens to them on ``--resume`` with more epochs.

The learning rate at optimiser step ``s`` (0-based, counted over the whole run) is
``optimizer.lr * factor(s)``: a linear warm-up over the first ``warmup`` steps
(``factor = (s + 1) / warmup``), then, with ``p = (s - warmup) / (total - warmup)`` clipped to
``[0, 1]``:

* ``constant``: 1;
* ``cosine``: ``0.02 + 0.98 * (1 + cos(pi * p)) / 2`` (from 1 down to 2 % of ``lr``);
* ``poly``: ``(1 - p) ** 0.9`` (nnU-Net's ``lr * (1 - step / total) ** 0.9``; with
  ``warmup: 0`` exactly that), down to 0.

``total`` is fixed when a run starts: ``epochs * steps per epoch`` of its first invocation.
It is kept in the checkpoint (:class:`ScheduleSpan`), so ``--resume`` continues the original
schedule step for step, whatever ``epochs`` says then. Resuming with *more* epochs than the
run was started with extends it by one rule: **the extra epochs run at the schedule's final
learning rate** (cosine: 2 % of ``lr``; constant: ``lr``), i.e. ``p`` stays at 1; there is no
jump back up. A poly schedule ends at 0, so extending one is refused
(:func:`check_extension`): train a new run from the package instead (``--init``). Resuming
with fewer epochs stops early on the original schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError

__all__ = ["COSINE_FLOOR", "POLY_EXPONENT", "ScheduleSpan", "check_extension", "lr_factor"]

COSINE_FLOOR = 0.02
"""The cosine schedule's final learning rate, as a fraction of ``optimizer.lr``."""

POLY_EXPONENT = 0.9
"""nnU-Net's exponent of the poly schedule."""


@dataclass(frozen=True)
class ScheduleSpan:
    """The length a run's schedule was planned for: ``epochs`` of ``steps`` steps, ``total_steps``
    in all, the first ``warmup_steps`` of them warming up; kept in the checkpoint."""

    kind: str
    epochs: int
    steps: int
    total_steps: int
    warmup_steps: int

    @classmethod
    def plan(cls, kind: str, epochs: int, steps: int, warmup: float) -> ScheduleSpan:
        """The span of a new run: ``epochs * steps`` steps, ``int(warmup * total)`` of warm-up."""
        total = max(1, epochs * steps)
        return cls(kind, epochs, steps, total, int(warmup * total))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScheduleSpan:
        return cls(str(data["kind"]), int(data["epochs"]), int(data["steps"]), int(data["total_steps"]),
                   int(data["warmup_steps"]))

    def describe(self, epochs: int) -> str:
        """One phrase for reports: the planned schedule and, when ``epochs`` exceeds it, the extension."""
        text = f"{self.kind} schedule over {self.epochs} epochs ({self.total_steps} steps"
        text += f", {self.warmup_steps} of warm-up)" if self.warmup_steps else ")"
        if epochs > self.epochs:
            text += f", extended by {epochs - self.epochs} epochs at its final learning rate (resumed)"
        return text


def lr_factor(span: ScheduleSpan) -> Callable[[int], float]:
    """``factor(step)``: the learning rate at 0-based ``step`` as a fraction of ``optimizer.lr``."""
    total, warmup, kind = span.total_steps, span.warmup_steps, span.kind
    if kind not in ("constant", "cosine", "poly"):
        raise ConfigError(f"optimizer.schedule {kind!r}; expected constant, cosine or poly")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "cosine":
            return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))  # COSINE_FLOOR + (1 - it) * ...
        return float((1.0 - progress) ** POLY_EXPONENT)

    return factor


def check_extension(span: ScheduleSpan, epochs: int) -> None:
    """Refuse resuming a poly schedule with more epochs than it was planned for (it ends at LR 0).

    Raises
    ------
    ConfigError
        One line naming the planned and requested epochs and the way out.
    """
    if span.kind == "poly" and epochs > span.epochs:
        raise ConfigError(
            f"--resume with epochs {epochs}: this run's poly schedule was planned for {span.epochs} epochs and ends "
            f"at learning rate 0, so the extra epochs would not train; keep epochs: {span.epochs}, or fine-tune "
            "its package in a new run (--init PACKAGE) with a schedule of its own"
        )
