"""The run sections of the training config: where chips are placed, the optimiser and its schedule,
early stopping (see :mod:`segflow.training.config` for the YAML layout)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .data_config import _Strict

__all__ = ["EarlyStoppingConfig", "OptimizerConfig", "SamplingConfig"]


class SamplingConfig(_Strict):
    """Where training chips are placed (see :mod:`segflow.training.sampling`): ``foreground`` is the
    fraction of chips centred on a pixel (voxel) of a foreground class (class-balanced; nnU-Net
    uses 0.33), for sources that record where their classes are (NIfTI pairs, raster pairs,
    vector labels, synthetic scenes); the rest, and every chip of other sources, are placed
    uniformly. Default (None): 0.33 for 3D models, 0 for 2D ones (2D runs sample uniformly
    unless asked, as before oversampling existed for them)."""

    foreground: float | None = Field(default=None, ge=0.0, le=1.0)

    def fraction(self, spatial_dims: int) -> float:
        """The foreground fraction in effect for a model of ``spatial_dims``."""
        if self.foreground is not None:
            return self.foreground
        return 0.33 if spatial_dims == 3 else 0.0


class EarlyStoppingConfig(_Strict):
    """Stop when the validation mean IoU has not risen by more than ``min_delta`` over the best so
    far for ``patience`` epochs (see :mod:`segflow.training.stopping`)."""

    patience: int = Field(ge=1, le=100_000)
    min_delta: float = Field(default=0.0, ge=0.0, lt=1.0)


class OptimizerConfig(_Strict):
    """AdamW (or SGD with ``momentum``, default 0.9) with a constant, cosine or poly learning rate after a
    linear warm-up (see :mod:`segflow.training.schedule`); ``clip_grad_norm``: clip the gradients' global
    L2 norm to it before each step (nnU-Net uses 12; default none)."""

    name: Literal["adamw", "sgd"] = "adamw"
    momentum: float | None = Field(default=None, ge=0.0, lt=1.0)  # SGD only (None: 0.9)
    lr: float = Field(default=1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(default=1e-4, ge=0.0, le=1.0)
    schedule: Literal["cosine", "constant", "poly"] = "cosine"
    warmup: float = Field(default=0.03, ge=0.0, lt=1.0)
    clip_grad_norm: float | None = Field(default=None, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> OptimizerConfig:
        if self.momentum is not None and self.name != "sgd":
            raise ValueError("momentum is for optimizer name: sgd (AdamW has betas); remove momentum")
        return self
