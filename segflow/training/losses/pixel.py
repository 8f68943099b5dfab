"""Pixel-wise losses: cross-entropy, binary cross-entropy (plain and weighted) and focal loss.

Each returns ``sum(w_i * loss_i) / n_valid`` over the non-ignored pixels (see
:mod:`segflow.training.losses`); logits ``(N, C, *spatial)``, targets ``(N, *spatial)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from segflow.errors import ConfigError, InputError

from ._common import (
    _binary_target,
    _check_ignore_index,
    _check_logits,
    _class_vector,
    _finite_float,
    _float_logits,
    _is_binary,
    _is_sigmoid,
    _match_classes,
    _multiclass_target,
    _pixel_weight,
    _weighted_mean,
)

__all__ = ["bce", "cross_entropy", "focal_loss", "weighted_bce"]


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    class_weights: Sequence[float] | Tensor | None = None,
    weight: Tensor | None = None,
    ignore_index: int | None = None,
) -> Tensor:
    """Multi-class cross-entropy from logits.

    ``loss_i = -cw[y_i] * log softmax(logits)_i[y_i]``, reduced as described in the module
    docstring (divided by the number of non-ignored pixels, not by the sum of weights).

    Parameters
    ----------
    logits : Tensor
        ``(N, C, *spatial)`` raw scores, ``C >= 2``.
    target : Tensor
        ``(N, *spatial)`` integer class indices in ``[0, C)`` or ``ignore_index``.
    class_weights : sequence of float or Tensor, optional
        One weight per class (length ``C``), e.g. inverse class frequencies.
    weight : Tensor, optional
        Per-pixel weight map ``(N, *spatial)``.
    ignore_index : int, optional
        Target value excluded from the loss.

    Returns
    -------
    Tensor
        Scalar loss.
    """
    _check_logits(logits)
    if _is_binary(logits):
        raise InputError(
            f"cross_entropy got logits {tuple(logits.shape)} with 1 channel; expected C >= 2; "
            "use bce for binary"
        )
    logits = _float_logits(logits)
    ignore_index = _check_ignore_index(ignore_index)
    y, valid = _multiclass_target(logits, target, ignore_index)
    w = _pixel_weight(logits, weight)
    logp = F.log_softmax(logits, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
    loss = -logp
    cw = _class_vector("class_weights", class_weights)
    if cw is not None:
        loss = loss * _match_classes("class_weights", cw, logits)[y]
    return _weighted_mean(loss, valid, w)


def weighted_bce(
    logits: Tensor,
    target: Tensor,
    *,
    pos_weight: float = 1.0,
    neg_weight: float = 1.0,
    weight: Tensor | None = None,
    ignore_index: int | None = None,
) -> Tensor:
    """Class-weighted binary cross-entropy from logits, numerically stable.

    ``loss_i = -(pos_weight * y_i * log σ(x_i) + neg_weight * (1 - y_i) * log(1 - σ(x_i)))``
    with ``log σ(x)`` and ``log(1 - σ(x)) = log σ(-x)`` computed by ``logsigmoid`` (no
    overflow for large ``|x|``). ``pos_weight = n_neg / n_pos`` is the usual choice for a
    rare foreground. With ``K > 1`` channels (multi-label) every channel is its own binary
    problem and the mean runs over the valid ``(pixel, class)`` elements, as
    ``torch.nn.functional.binary_cross_entropy_with_logits`` does over all of them.

    Parameters
    ----------
    logits : Tensor
        ``(N, 1, *spatial)`` (binary) or ``(N, K, *spatial)`` (multi-label) raw scores.
    target : Tensor
        ``(N, 1, *spatial)`` or ``(N, *spatial)`` (binary), ``(N, K, *spatial)`` (multi-label),
        with values in ``[0, 1]`` or ``ignore_index``.
    pos_weight, neg_weight : float
        Weights of the positive and negative terms (finite, >= 0).
    weight : Tensor, optional
        Per-pixel weight map ``(N, *spatial)``.
    ignore_index : int, optional
        Target value excluded from the loss.

    Returns
    -------
    Tensor
        Scalar loss.
    """
    pw = _finite_float("pos_weight", pos_weight, low=0.0)
    nw = _finite_float("neg_weight", neg_weight, low=0.0)
    _check_logits(logits)
    logits = _float_logits(logits)
    y, valid = _binary_target(logits, target, _check_ignore_index(ignore_index))
    w = _pixel_weight(logits, weight)
    loss = -(pw * y * F.logsigmoid(logits) + nw * (1.0 - y) * F.logsigmoid(-logits))
    return _weighted_mean(loss, valid, w)


def bce(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    ignore_index: int | None = None,
) -> Tensor:
    """Binary cross-entropy from logits (:func:`weighted_bce` with unit class weights).

    Parameters
    ----------
    logits : Tensor
        ``(N, 1, *spatial)`` (binary) or ``(N, K, *spatial)`` (multi-label) raw scores.
    target : Tensor
        ``(N, 1, *spatial)`` or ``(N, *spatial)`` (binary), ``(N, K, *spatial)`` (multi-label),
        with values in ``[0, 1]`` or ``ignore_index``.
    weight : Tensor, optional
        Per-pixel weight map ``(N, *spatial)``.
    ignore_index : int, optional
        Target value excluded from the loss.

    Returns
    -------
    Tensor
        Scalar loss.
    """
    return weighted_bce(logits, target, weight=weight, ignore_index=ignore_index)


def _check_focal(
    gamma: float, alpha: float | Sequence[float] | Tensor | None
) -> tuple[float, float | Tensor | None]:
    g = _finite_float("gamma", gamma, low=0.0)
    if alpha is None:
        return g, None
    if isinstance(alpha, int | float | np.number):
        return g, _finite_float("alpha", alpha, low=0.0, high=1.0)
    return g, _class_vector("alpha", alpha)


def _modulation(one_minus_pt: Tensor, gamma: float) -> Tensor:
    """``(1 - p_t) ** gamma``, clamped away from 0 so the gradient stays finite for gamma < 1."""
    if gamma == 0.0:
        return torch.ones_like(one_minus_pt)
    return one_minus_pt.clamp_min(torch.finfo(one_minus_pt.dtype).tiny) ** gamma


def _binary_focal(x: Tensor, y: Tensor, gamma: float, alpha: float | None) -> Tensor:
    ce = -(y * F.logsigmoid(x) + (1.0 - y) * F.logsigmoid(-x))
    # 1 - p_t, with p_t = p*y + (1-p)*(1-y); written with σ(±x) to stay accurate near 0.
    one_minus_pt = y * torch.sigmoid(-x) + (1.0 - y) * torch.sigmoid(x)
    loss = ce * _modulation(one_minus_pt, gamma)
    if alpha is not None:
        loss = loss * (alpha * y + (1.0 - alpha) * (1.0 - y))
    return loss


def _multiclass_focal(logits: Tensor, y: Tensor, gamma: float, alpha: Tensor | None) -> Tensor:
    logpt = F.log_softmax(logits, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
    loss = -logpt * _modulation(-torch.expm1(logpt), gamma)
    if alpha is not None:
        loss = loss * _match_classes("alpha", alpha, logits)[y]
    return loss


def focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | Tensor | None = None,
    weight: Tensor | None = None,
    ignore_index: int | None = None,
    multilabel: bool = False,
) -> Tensor:
    """Focal loss of Lin et al. (2017), sigmoid (binary, multi-label) or softmax (multi-class).

    ``loss_i = -alpha_t * (1 - p_t) ** gamma * log p_t`` where ``p_t`` is the predicted
    probability of the true class. With ``gamma=0`` and ``alpha=None`` it equals
    :func:`bce` (sigmoid) or :func:`cross_entropy` (multi-class). Sigmoid: RetinaNet's
    ``sigmoid_focal_loss`` per element, ``alpha_t = alpha`` for positives and ``1 - alpha`` for
    negatives, averaged over the valid elements.

    Parameters
    ----------
    logits : Tensor
        ``(N, 1, *spatial)`` (binary), ``(N, K, *spatial)`` (multi-label, with ``multilabel``)
        or ``(N, C, *spatial)`` (multi-class, ``C >= 2``).
    target : Tensor
        Binary: ``(N, [1,] *spatial)`` in ``[0, 1]``; multi-label: ``(N, K, *spatial)`` 0/1;
        multi-class: ``(N, *spatial)`` class indices.
    gamma : float
        Focusing parameter, >= 0.
    alpha : float or sequence of float, optional
        Sigmoid: weight of the positives in ``[0, 1]`` (negatives get ``1 - alpha``).
        Multi-class: one weight per class.
    weight : Tensor, optional
        Per-pixel weight map ``(N, *spatial)``.
    ignore_index : int, optional
        Target value excluded from the loss.
    multilabel : bool
        ``C >= 2`` channels are independent sigmoids (targets ``(N, C, *spatial)``), not a softmax.

    Returns
    -------
    Tensor
        Scalar loss.
    """
    g, a = _check_focal(gamma, alpha)
    _check_logits(logits)
    logits = _float_logits(logits)
    ignore_index = _check_ignore_index(ignore_index)
    w = _pixel_weight(logits, weight)
    if _is_sigmoid(logits, multilabel):
        if isinstance(a, Tensor):
            raise ConfigError(
                f"alpha={a.tolist()} is per-class but the outputs are sigmoids; "
                "pass a float in [0, 1] (weight of the positives, RetinaNet uses 0.25)"
            )
        y, valid = _binary_target(logits, target, ignore_index)
        loss = _binary_focal(logits, y, g, a)
    else:
        if isinstance(a, float):
            raise ConfigError(
                f"alpha={a} is a single float but the logits have {logits.shape[1]} classes; "
                "pass one alpha per class"
            )
        yi, valid = _multiclass_target(logits, target, ignore_index)
        loss = _multiclass_focal(logits, yi, g, a)
    return _weighted_mean(loss, valid, w)
