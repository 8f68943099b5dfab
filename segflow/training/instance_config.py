"""Training-config rules for an instance-segmentation model (``model.architecture.name: maskrcnn``).

Mask R-CNN (:mod:`segflow.models.maskrcnn`) trains on the sum of its own losses (RPN objectness and
box regression, classifier, box regression, mask) with targets built from instance ids
(:mod:`~segflow.training.instance_targets`), so the semantic options that weigh or choose a pixel loss
do not apply and are refused by name rather than silently ignored. The package rules hold too: 2D,
class 0 the background (kind ``stuff``), every other class an object class (kind ``thing``), and
``output: {activation: instances}``. Sources without instance ids are refused when the data is read
(:func:`~segflow.training.border.check_instances`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["check_instance_training", "is_instance_model"]

_REFUSED = {
    "loss": "Mask R-CNN's loss is the sum of its RPN, box and mask losses",
    "class_weights": "Mask R-CNN samples its RoIs instead of weighing pixels",
    "border_weights": "Mask R-CNN separates touching objects by itself",
    "early_stopping": "early stopping watches the validation mean IoU, which instance training does not measure",
    "init": "fine-tuning a Mask R-CNN package is not supported yet",
}


def is_instance_model(config: TrainConfig) -> bool:
    """Whether ``config`` trains an instance-segmentation network (Mask R-CNN)."""
    return config.model.architecture.name.strip().lower() == "maskrcnn"


def check_instance_training(config: TrainConfig) -> None:
    """Refuse settings that do not fit a Mask R-CNN run (or an instance output without one); raises ValueError."""
    model = config.model
    maskrcnn = is_instance_model(config)
    if model.output.activation == "instances" and not maskrcnn:
        raise ValueError("model.output activation instances is the output of Mask R-CNN: set model.architecture: "
                         "{name: maskrcnn}, or use softmax/sigmoid")
    if not maskrcnn:
        return
    if model.output.activation != "instances":
        raise ValueError("model.architecture maskrcnn finds objects, not per-pixel classes: set model.output: "
                         "{activation: instances} (optionally with score_threshold)")
    if model.spatial_dims != 2:
        raise ValueError("model.architecture maskrcnn is 2D: set model.spatial_dims: 2")
    wrong = [c.name for k, c in enumerate(model.classes) if c.kind != ("stuff" if k == 0 else "thing")]
    if wrong:
        raise ValueError(f"model.architecture maskrcnn: class 0 is the background (kind stuff) and every other class "
                         f"an object class (kind thing); fix the kinds of {wrong}")
    if model.encoder_weights is not None:
        raise ValueError("model.encoder_weights: ImageNet encoder weights for maskrcnn are not supported yet; remove "
                         "them")
    # a value other than the default (the CLI re-validates a dumped config, so every field looks set)
    defaults = {name: type(config).model_fields[name].default for name in _REFUSED}
    given = [name for name in _REFUSED if getattr(config, name) != defaults[name]]
    if given:
        reasons = "; ".join(f"{name}: {_REFUSED[name]}" for name in given)
        raise ValueError(f"model.architecture maskrcnn does not use {', '.join(given)} ({reasons}); remove "
                         f"{'it' if len(given) == 1 else 'them'}")
