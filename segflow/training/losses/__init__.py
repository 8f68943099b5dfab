"""Segmentation losses that cope with class imbalance.

Every loss takes raw *logits* (never probabilities) and works in one of three modes:

* **binary** (sigmoid) – logits ``(N, 1, *spatial)``; target ``(N, 1, *spatial)`` or
  ``(N, *spatial)`` holding 0/1 (soft labels in ``[0, 1]`` are accepted by the
  pixel-wise losses); probabilities are ``sigmoid(logits)``.
* **multi-label** (sigmoid) – logits ``(N, K, *spatial)`` with ``multilabel=True`` (always for
  :func:`bce` / :func:`weighted_bce`); target ``(N, K, *spatial)``, one 0/1 plane per class
  (classes may overlap, ``ignore_index`` per element); every channel is its own binary problem.
* **multi-class** (softmax) – logits ``(N, C, *spatial)`` with ``C >= 2``; integer target
  ``(N, *spatial)`` of class indices in ``[0, C)``; probabilities are
  ``softmax(logits, dim=1)``.

Which losses fit which outputs: :func:`losses_for`; :func:`build_loss` with ``output=`` refuses
the others.

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
losses summed over non-ignored pixels, divided by the *number* of non-ignored pixels
(multi-label: over the non-ignored ``(pixel, class)`` elements, each weighted by its pixel's weight).
Class weights and weight maps therefore scale the loss; note this differs from
``torch.nn.functional.cross_entropy(weight=...)``, which divides by the sum of the
weights. A batch whose pixels are all ignored gives a loss of 0 (with a gradient of 0),
never NaN.

Each loss is a plain function plus a small :class:`torch.nn.Module` wrapper that
validates its options when constructed; :func:`build_loss` builds a wrapper from a
config name or dict. :func:`unet_weight_map` computes the border-emphasising weight
map of Ronneberger et al. (2015) with numpy/scipy.

The losses are split by family: :mod:`~segflow.training.losses.pixel` (cross-entropy, BCE,
weighted BCE, focal), :mod:`~segflow.training.losses.region` (soft Jaccard, Dice, Generalized
Dice, Tversky, combo), :mod:`~segflow.training.losses.weights` (U-Net weight map),
:mod:`~segflow.training.losses.modules` (module wrappers and :class:`CombinedLoss`); their public
names are re-exported here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Literal

from torch import nn

from segflow.errors import ConfigError

from .modules import (
    BCEDiceLoss,
    BCEJaccardLoss,
    BCEWithLogitsLoss,
    CEDiceLoss,
    CEJaccardLoss,
    CombinedLoss,
    ComboLoss,
    CrossEntropyLoss,
    FocalLoss,
    GeneralizedDiceLoss,
    SoftDiceLoss,
    SoftJaccardLoss,
    TverskyLoss,
    WeightedBCELoss,
)
from .pixel import bce, cross_entropy, focal_loss, weighted_bce
from .region import combo_loss, generalized_dice, soft_dice, soft_jaccard, tversky
from .weights import border_term, unet_weight_map

__all__ = [
    "LOSS_NAMES",
    "BCEDiceLoss",
    "BCEJaccardLoss",
    "BCEWithLogitsLoss",
    "CEDiceLoss",
    "CEJaccardLoss",
    "CombinedLoss",
    "ComboLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "GeneralizedDiceLoss",
    "SoftDiceLoss",
    "SoftJaccardLoss",
    "TverskyLoss",
    "WeightedBCELoss",
    "bce",
    "border_term",
    "build_loss",
    "combo_loss",
    "cross_entropy",
    "focal_loss",
    "generalized_dice",
    "losses_for",
    "soft_dice",
    "soft_jaccard",
    "tversky",
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
    "generalized_dice": GeneralizedDiceLoss,
    "tversky": TverskyLoss,
    "bce+jaccard": BCEJaccardLoss,
    "bce+dice": BCEDiceLoss,
    "ce+jaccard": CEJaccardLoss,
    "ce+dice": CEDiceLoss,
    "combo": ComboLoss,
}

#: Names accepted by :func:`build_loss`.
LOSS_NAMES: tuple[str, ...] = tuple(_REGISTRY)

OutputKind = Literal["softmax", "sigmoid"]

# The output kinds each loss fits (a name not listed fits softmax outputs only).
_KINDS: dict[str, tuple[OutputKind, ...]] = {
    "bce": ("sigmoid",),
    "weighted_bce": ("sigmoid",),
    "bce+jaccard": ("sigmoid",),
    "bce+dice": ("sigmoid",),
    "focal": ("softmax", "sigmoid"),
    "jaccard": ("softmax", "sigmoid"),
    "dice": ("softmax", "sigmoid"),
    "generalized_dice": ("softmax", "sigmoid"),
    "tversky": ("softmax", "sigmoid"),
    "combo": ("softmax", "sigmoid"),
}

# What a loss meant for a softmax model before the kinds were told apart, and what to use instead.
_SOFTMAX_INSTEAD = {"bce+jaccard": "ce+jaccard", "bce+dice": "ce+dice", "bce": "ce", "weighted_bce": "ce with "
                    "class_weights"}


def losses_for(output: OutputKind) -> tuple[str, ...]:
    """The loss names of :data:`LOSS_NAMES` that fit a model with ``output`` (softmax or sigmoid) outputs."""
    return tuple(name for name in LOSS_NAMES if output in _KINDS.get(name, ("softmax",)))


def _accepted_params(factory: Callable[..., nn.Module]) -> list[str]:
    params = inspect.signature(factory).parameters.values()
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def build_loss(spec: str | Mapping[str, Any], *, output: OutputKind | None = None) -> nn.Module:
    """Build a loss module from a config name or dict, optionally for a model's kind of outputs.

    Sigmoid outputs (binary: 1 channel; multi-label: one channel per class) take ``bce``,
    ``weighted_bce``, ``focal`` (scalar ``alpha``), ``dice``, ``jaccard``, ``bce+dice``,
    ``bce+jaccard`` and ``combo``; softmax outputs take ``ce``, ``focal`` (per-class ``alpha``),
    ``dice``, ``jaccard``, ``ce+dice``, ``ce+jaccard`` and ``combo`` (see :func:`losses_for`);
    both take ``generalized_dice`` and ``tversky`` (``alpha`` on false positives, ``beta`` on
    false negatives).

    Parameters
    ----------
    spec : str or mapping
        A name from :data:`LOSS_NAMES` (``"bce"``, ``"weighted_bce"``, ``"ce"``/``"cross_entropy"``,
        ``"focal"``, ``"jaccard"``, ``"dice"``, ``"bce+jaccard"``, ``"bce+dice"``, ``"ce+jaccard"``,
        ``"ce+dice"``, ``"combo"`` (CE or BCE, whichever fits the logits, plus Jaccard)), or a mapping
        ``{"name": <name>, **options}`` whose options are the module's constructor arguments,
        e.g. ``{"name": "bce+jaccard", "alpha": 0.7}`` or ``{"name": "focal", "gamma": 1.0}``.
    output : {"softmax", "sigmoid"}, optional
        The model's outputs: a loss that does not fit them is refused, and for ``sigmoid`` the
        loss treats every channel as an independent sigmoid (``multilabel=True``), so targets
        are ``(N, K, *spatial)`` 0/1 planes (or ``(N, *spatial)`` with one channel).

    Returns
    -------
    nn.Module
        Called as ``loss(logits, target, weight=None)``.

    Raises
    ------
    ConfigError
        Unknown name (the message lists the valid ones), unknown option, bad option value, or a
        loss that does not fit ``output`` (the message lists those that do).
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
    if output is not None:
        _check_fits(key, output)
        if "multilabel" in options:
            raise ConfigError(f"loss option multilabel is set by the model's output ({output}); remove it")
        if "multilabel" in accepted:
            options["multilabel"] = output == "sigmoid"
    return factory(**options)


def _check_fits(key: str, output: OutputKind) -> None:
    if output not in ("softmax", "sigmoid"):
        raise ConfigError(f"output={output!r}; expected 'softmax' or 'sigmoid'")
    fitting = losses_for(output)
    if key in fitting:
        return
    instead = f" ({_SOFTMAX_INSTEAD[key]} is its softmax counterpart)" if output == "softmax" and key in \
        _SOFTMAX_INSTEAD else ""
    raise ConfigError(f"loss {key!r} does not fit a {output} model{instead}; losses for {output} outputs: "
                      f"{', '.join(fitting)}")

