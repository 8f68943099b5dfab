"""What the trained network outputs (``model.output``) and the border weights (``border_weights``).

``model.output`` is the model package's :class:`~segflow.models.output.OutputSpec`, written to the
package's ``model.yaml`` as it is:

* ``{activation: softmax}`` (the default): one channel per class, one class per pixel;
* ``{activation: sigmoid}`` with exactly 2 classes: binary, 1 channel (the probability of class 1);
  labels are single-band 0/1 (255 = unlabelled) as for softmax;
* ``{activation: sigmoid, multilabel: true, thresholds: [...]}``: one independent sigmoid channel
  per class, classes may overlap; labels are one 0/1 plane per class (a multi-band label raster,
  band k = class k; vector polygons rasterised per class), ``(K, Y, X)``.

``border_weights: {w0: 10, sigma: 5}`` (the U-Net paper's defaults) multiplies every pixel's loss
by ``w(x) = w_c(x) + w0 * exp(-(d1 + d2)**2 / (2 * sigma**2))`` computed per chip from instance
ids (see :mod:`segflow.training.border`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ..models.output import OutputSpec
from .data_config import _Strict

if TYPE_CHECKING:
    from .config import ModelConfig, TrainConfig

__all__ = ["BorderWeightsConfig", "OutputKind", "check_model_output", "check_train_output", "output_channels",
           "output_kind", "thresholds_of"]

OutputKind = Literal["softmax", "sigmoid"]


class BorderWeightsConfig(_Strict):
    """U-Net border weights from instances: ``w0`` (weight at a border) and ``sigma`` (its width, pixels)."""

    w0: float = Field(default=10.0, ge=0.0, le=1e6)
    sigma: float = Field(default=5.0, gt=0.0, le=1e4)


def output_kind(output: OutputSpec) -> OutputKind:
    """``sigmoid`` (binary or multi-label) or ``softmax``: which losses fit the network's outputs."""
    return "sigmoid" if output.activation == "sigmoid" else "softmax"


def output_channels(output: OutputSpec, classes: int) -> int:
    """Channels of the network: 1 for a binary sigmoid, else one per class (as ``ModelSpec.output_channels``)."""
    return 1 if output.activation == "sigmoid" and not output.multilabel else classes


def thresholds_of(output: OutputSpec, classes: int) -> tuple[float, ...] | None:
    """Per-class thresholds of a multi-label output (0.5 each unless given); None for single-label outputs."""
    if not output.multilabel:
        return None
    return tuple(float(t) for t in output.thresholds) if output.thresholds is not None else (0.5,) * classes


def check_model_output(model: ModelConfig) -> None:
    """``model.output`` fits the classes and can be trained; raises ValueError (pydantic reports the field)."""
    output, classes = model.output, len(model.classes)
    if output.activation == "none":
        raise ValueError("output.activation none is for networks that already return probabilities; a network "
                         "trained here returns logits: use softmax or sigmoid")
    if output.activation == "sigmoid" and not output.multilabel and classes != 2:
        raise ValueError(f"a binary sigmoid output (1 channel) needs exactly 2 classes (background, object), got "
                         f"{classes}; set output.multilabel: true for classes that may overlap, or use softmax")
    if output.thresholds is not None and len(output.thresholds) != classes:
        raise ValueError(f"output.thresholds has {len(output.thresholds)} values for {classes} classes; give one "
                         "per class, in the order of classes")
    if output.multilabel and model.spatial_dims != 2:
        raise ValueError("multi-label training reads multi-band label rasters, vector labels or synthetic scenes, "
                         "all 2D; for volumes use softmax or a binary sigmoid")


def check_train_output(config: TrainConfig) -> None:
    """Training settings that depend on the output kind; raises ValueError."""
    if config.model.output.multilabel and config.class_weights is not None:
        raise ValueError("class_weights weigh pixels by their one class, but a multi-label model's pixels may hold "
                         "several: remove class_weights and use weighted_bce (pos_weight) or focal (alpha)")
