"""The input side of ``model.yaml``: bands, normalisation, and what the input values are (see
:mod:`segflow.models.package` for the whole contract)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["BandSpec", "ExpectsSpec", "Normalization"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BandSpec(_Strict):
    name: str = Field(min_length=1)
    index: int | None = Field(default=None, ge=1)
    source: str = Field(default="image", pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")


class Normalization(_Strict):
    """How raw pixel values become network inputs.

    ``none``: as they are; ``scale``: ``x * scale + offset``; ``meanstd``: ``(x - mean) / std``
    per band; ``ct_window``: a CT intensity window in Hounsfield units, ``clip(x, center -
    width/2, center + width/2)`` mapped linearly to ``[0, 1]`` (e.g. soft tissue: center 40,
    width 400).
    """

    mode: Literal["none", "scale", "meanstd", "ct_window"] = "none"
    scale: float = 1.0
    offset: float = 0.0
    mean: list[float] | None = None
    std: list[float] | None = None
    center: float | None = None
    width: float | None = None

    @model_validator(mode="after")
    def _check(self) -> Normalization:
        if self.mode == "meanstd":
            if self.mean is None or self.std is None:
                raise ValueError("mode meanstd needs both 'mean' and 'std' lists, one value per input band")
            if len(self.mean) != len(self.std):
                raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
            if any(s <= 0 for s in self.std):
                raise ValueError(f"std values must be > 0, got {self.std}")
        if self.mode == "ct_window":
            if self.center is None or self.width is None:
                raise ValueError("mode ct_window needs 'center' and 'width' in HU, e.g. center: 40, width: 400")
            if self.width <= 0:
                raise ValueError(f"ct_window width must be > 0 HU, got {self.width}")
        return self


class ExpectsSpec(_Strict):
    """What the model's input values are; an input that is evidently something else is refused.

    ``modality``: DICOM Modality codes taken (``CT``, ``MR``, ...), checked against the scene's
    ``meta["modality"]`` where the reader records one. ``unit``: the unit of ``range`` and
    ``p1_at_most``, for messages. ``range``: ``[low, high]`` that a measurement reads; sampled
    values below ``low`` are fill (no measurement, e.g. -2048 or -3024 HU outside a CT's field of
    view) and left out; of the rest, at most 1 % may lie above ``high``, and with ``p1_at_most``
    at least 1 % must lie at or below it. The rule and the sample: :mod:`segflow.models.expects`.
    """

    unit: str = Field(min_length=1)
    range: tuple[float, float]
    p1_at_most: float | None = None
    modality: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _check(self) -> ExpectsSpec:
        low, high = self.range
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"expects.range must be two finite numbers [low, high] with low < high, got {self.range}")
        if self.p1_at_most is not None and not low <= self.p1_at_most <= high:
            raise ValueError(f"expects.p1_at_most {self.p1_at_most} must lie in expects.range {list(self.range)}")
        return self
