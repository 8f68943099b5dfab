"""Segmentation losses that cope with class imbalance.

Every loss takes raw *logits* (never probabilities) and works in one of two modes,
chosen by the channel axis of the logits:

* **binary** – logits ``(N, 1, *spatial)``; target ``(N, 1, *spatial)`` or
  ``(N, *spatial)`` holding 0/1 (soft labels in ``[0, 1]`` are accepted by the
  pixel-wise losses); probabilities are ``sigmoid(logits)``.
* **multi-class** – logits ``(N, C, *spatial)`` with ``C >= 2``; integer target
  ``(N, *spatial)`` of class indices in ``[0, C)``; probabilities are
  ``softmax(logits, dim=1)``.

``spatial`` is ``(H, W)`` or ``(D, H, W)`` (any number of spatial axes >= 1 works).

Common options
--------------
weight
    Optional per-pixel weight map ``(N, *spatial)`` (``(N, 1, *spatial)`` is accepted too),
    e.g. from :func:`unet_weight_map`. Pixel-wise losses multiply each pixel's loss by it;
    the region losses (Dice/Jaccard) weight every pixel's contribution to the sums.
ignore_index
    Target value whose pixels are excluded entirely (from the sums *and* from the pixel
    count), e.g. ``255`` for nodata.

Reduction
---------
Pixel-wise losses (:func:`cross_entropy`, :func:`bce`, :func:`weighted_bce`,
:func:`focal_loss`) return ``sum(w_i * loss_i) / n_valid``: the weighted per-pixel
losses summed over non-ignored pixels, divided by the *number* of non-ignored pixels.
Class weights and weight maps therefore scale the loss; note this differs from
``torch.nn.functional.cross_entropy(weight=...)``, which divides by the sum of the
weights. A batch whose pixels are all ignored gives a loss of 0 (with a gradient of 0),
never NaN.

Each loss is a plain function plus a small :class:`torch.nn.Module` wrapper that
validates its options when constructed; :func:`build_loss` builds a wrapper from a
config name or dict. :func:`unet_weight_map` computes the border-emphasising weight
map of Ronneberger et al. (2015) with numpy/scipy.

The losses are split by family: :mod:`~segflow.training.losses.pixel` (cross-entropy, BCE,
weighted BCE, focal), :mod:`~segflow.training.losses.region` (soft Jaccard, Dice, combo),
:mod:`~segflow.training.losses.weights` (U-Net weight map), :mod:`~segflow.training.losses.modules`
(module wrappers and :class:`CombinedLoss`); their public names are re-exported here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from segflow.errors import ConfigError

from .modules import (
    BCEWithLogitsLoss,
    CombinedLoss,
    ComboLoss,
    CrossEntropyLoss,
    FocalLoss,
    SoftDiceLoss,
    SoftJaccardLoss,
    WeightedBCELoss,
)
from .pixel import bce, cross_entropy, focal_loss, weighted_bce
from .region import combo_loss, soft_dice, soft_jaccard
from .weights import unet_weight_map

__all__ = [
    "LOSS_NAMES",
    "BCEWithLogitsLoss",
    "CombinedLoss",
    "ComboLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "SoftDiceLoss",
    "SoftJaccardLoss",
    "WeightedBCELoss",
    "bce",
    "build_loss",
    "combo_loss",
    "cross_entropy",
    "focal_loss",
    "soft_dice",
    "soft_jaccard",
    "unet_weight_map",
    "weighted_bce",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "bce": BCEWithLogitsLoss,
    "weighted_bce": WeightedBCELoss,
    "ce": CrossEntropyLoss,
    "cross_entropy": CrossEntropyLoss,
    "focal": FocalLoss,
    "jaccard": SoftJaccardLoss,
    "dice": SoftDiceLoss,
    "bce+jaccard": ComboLoss,
    "combo": ComboLoss,
}

#: Names accepted by :func:`build_loss`.
LOSS_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def _accepted_params(factory: Callable[..., nn.Module]) -> list[str]:
    params = inspect.signature(factory).parameters.values()
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def build_loss(spec: str | Mapping[str, Any]) -> nn.Module:
    """Build a loss module from a config name or dict.

    Parameters
    ----------
    spec : str or mapping
        A name from :data:`LOSS_NAMES` (``"bce"``, ``"weighted_bce"``, ``"ce"``/``"cross_entropy"``,
        ``"focal"``, ``"jaccard"``, ``"dice"``, ``"bce+jaccard"``/``"combo"``), or a mapping
        ``{"name": <name>, **options}`` whose options are the module's constructor arguments,
        e.g. ``{"name": "bce+jaccard", "alpha": 0.7}`` or ``{"name": "focal", "gamma": 1.0}``.

    Returns
    -------
    nn.Module
        Called as ``loss(logits, target, weight=None)``.

    Raises
    ------
    ConfigError
        Unknown name (the message lists the valid ones), unknown option, or bad option value.
    """
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, Mapping):
        options = dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"loss spec {dict(spec)!r} has no string 'name'; e.g. {{'name': 'focal'}}")
    else:
        raise ConfigError(f"loss spec {spec!r}; expected a name or a dict with 'name' in {list(LOSS_NAMES)}")
    key = name.strip().lower().replace(" ", "")
    if key not in _REGISTRY:
        raise ConfigError(f"unknown loss {name!r}; expected one of {list(LOSS_NAMES)}")
    factory = _REGISTRY[key]
    accepted = _accepted_params(factory)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"loss {key!r} got unknown option {unknown[0]!r}; accepted options: {accepted}")
    return factory(**options)

