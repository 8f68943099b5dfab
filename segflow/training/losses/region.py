"""Region losses: soft Jaccard (IoU), soft Dice and the combination of cross-entropy and Jaccard.

Soft overlaps of probabilities and one-hot targets summed over the batch (or per image), per
class; logits ``(N, C, *spatial)``, targets ``(N, *spatial)``, see :mod:`segflow.training.losses`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from segflow.errors import ConfigError

from ._common import (
    _binary_target,
    _check_ignore_index,
    _check_logits,
    _finite_float,
    _float_logits,
    _is_binary,
    _multiclass_target,
    _pixel_weight,
)
from .pixel import bce, cross_entropy

__all__ = ["JaccardMode", "combo_loss", "soft_dice", "soft_jaccard"]

JaccardMode = Literal["1-J", "-logJ"]
_JACCARD_MODES = ("1-J", "-logJ")


def _check_smooth(smooth: float) -> float:
    return _finite_float("smooth", smooth, low=0.0)


def _check_classes(classes: Sequence[int] | None) -> tuple[int, ...] | None:
    if classes is None:
        return None
    if isinstance(classes, str | bytes) or not isinstance(classes, Sequence) or len(classes) == 0:
        raise ConfigError(f"classes={classes!r}; expected a non-empty list of class indices, or None for all")
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, int | np.integer) or c < 0:
            raise ConfigError(f"classes contains {c!r}; expected non-negative int class indices")
    return tuple(int(c) for c in classes)


def _region_sums(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int | None,
    classes: tuple[int, ...] | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per image and class: ``sum(m*p*y)``, ``sum(m*p)``, ``sum(m*y)``, each ``(N, K)``.

    ``m`` is the per-pixel weight times the valid mask; ``K`` is 1 (binary) or the
    number of selected classes.
    """
    _check_logits(logits)
    logits = _float_logits(logits)
    ignore_index = _check_ignore_index(ignore_index)
    w = _pixel_weight(logits, weight)
    if _is_binary(logits):
        if classes is not None:
            raise ConfigError(
                f"classes={list(classes)} given for binary logits {tuple(logits.shape)}; "
                "classes= applies to multi-class logits (C >= 2); drop it"
            )
        y, valid = _binary_target(logits, target, ignore_index)
        prob, onehot = torch.sigmoid(logits), y.unsqueeze(1)
    else:
        yi, valid = _multiclass_target(logits, target, ignore_index)
        prob = torch.softmax(logits, dim=1)
        onehot = torch.zeros_like(prob).scatter_(1, yi.unsqueeze(1), 1.0)
        if classes is not None:
            bad = [c for c in classes if c >= logits.shape[1]]
            if bad:
                raise ConfigError(
                    f"classes contains {bad[0]} but the logits have {logits.shape[1]} classes; "
                    f"use indices in [0, {logits.shape[1]})"
                )
            prob, onehot = prob[:, list(classes)], onehot[:, list(classes)]
    mask = valid.to(prob.dtype) if w is None else valid.to(prob.dtype) * w
    mask = mask.unsqueeze(1)
    dims = tuple(range(2, prob.ndim))
    return (mask * prob * onehot).sum(dims), (mask * prob).sum(dims), (mask * onehot).sum(dims)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with ``0 / 0 := 1`` (an empty class predicted empty is a perfect score)."""
    safe = den.clamp_min(torch.finfo(den.dtype).tiny)
    return torch.where(den > 0, num / safe, torch.ones_like(num))


def _pool(inter: Tensor, psum: Tensor, ysum: Tensor, per_image: bool) -> tuple[Tensor, Tensor, Tensor]:
    if per_image:
        return inter, psum, ysum
    return inter.sum(0, keepdim=True), psum.sum(0, keepdim=True), ysum.sum(0, keepdim=True)


def soft_jaccard(
    logits: Tensor,
    target: Tensor,
    *,
    mode: JaccardMode = "1-J",
    smooth: float = 1.0,
    classes: Sequence[int] | None = None,
    per_image: bool = False,
    weight: Tensor | None = None,
    ignore_index: int | None = None,
) -> Tensor:
    """Soft Jaccard (IoU) loss on sigmoid (binary) or softmax (multi-class) probabilities.

    Per class ``J = (I + smooth) / (U + smooth)`` with ``I = sum(p*y)`` and
    ``U = sum(p) + sum(y) - I`` (sums over pixels, weighted by ``weight``);
    ``0/0`` (``smooth=0`` and a class absent in both) counts as ``J = 1``. The loss is
    ``1 - J`` (``mode="1-J"``) or ``-log J`` (``mode="-logJ"``, always >= ``1 - J``),
    averaged over classes (and images, if ``per_image``).

    Parameters
    ----------
    logits : Tensor
        ``(N, 1, *spatial)`` (binary) or ``(N, C, *spatial)`` (multi-class).
    target : Tensor
        Binary: ``(N, [1,] *spatial)`` in ``[0, 1]``; multi-class: ``(N, *spatial)`` class indices.
    mode : {"1-J", "-logJ"}
        Form of the loss.
    smooth : float
        Added to numerator and denominator, >= 0.
    classes : sequence of int, optional
        Multi-class only: the classes to average over (default all ``C``, background included).
    per_image : bool
        If True compute J per image and average; otherwise pool the batch into one volume.
    weight : Tensor, optional
        Per-pixel weight map ``(N, *spatial)``.
    ignore_index : int, optional
        Target value whose pixels are excluded.

    Returns
    -------
    Tensor
        Scalar loss.
    """
    if mode not in _JACCARD_MODES:
        raise ConfigError(f"mode={mode!r}; expected one of {list(_JACCARD_MODES)}")
    s = _check_smooth(smooth)
    sums = _region_sums(logits, target, weight, ignore_index, _check_classes(classes))
    inter, psum, ysum = _pool(*sums, per_image)
    jac = _ratio(inter + s, psum + ysum - inter + s)
    if mode == "1-J":
        return (1.0 - jac).mean()
    return -torch.log(jac.clamp_min(torch.finfo(jac.dtype).tiny)).mean()


def soft_dice(
    logits: Tensor,
    target: Tensor,
    *,
    smooth: float = 1.0,
    classes: Sequence[int] | None = None,
    per_image: bool = False,
    weight: Tensor | None = None,
    ignore_index: int | None = None,
) -> Tensor:
    """Soft Dice loss ``1 - (2I + smooth) / (sum(p) + sum(y) + smooth)``, averaged over classes.

    Same modes, options and conventions as :func:`soft_jaccard`.

    Parameters
    ----------
    logits : Tensor
        ``(N, 1, *spatial)`` (binary) or ``(N, C, *spatial)`` (multi-class).
    target : Tensor
        Binary: ``(N, [1,] *spatial)`` in ``[0, 1]``; multi-class: ``(N, *spatial)`` class indices.
    smooth : float
        Added to numerator and denominator, >= 0.
    classes : sequence of int, optional
        Multi-class only: the classes to average over (default all).
    per_image : bool
        If True compute Dice per image and average; otherwise pool the batch.
    weight : Tensor, optional
        Per-pixel weight map ``(N, *spatial)``.
    ignore_index : int, optional
        Target value whose pixels are excluded.

    Returns
    -------
    Tensor
        Scalar loss.
    """
    s = _check_smooth(smooth)
    sums = _region_sums(logits, target, weight, ignore_index, _check_classes(classes))
    inter, psum, ysum = _pool(*sums, per_image)
    return (1.0 - _ratio(2.0 * inter + s, psum + ysum + s)).mean()


def combo_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.5,
    mode: JaccardMode = "1-J",
    smooth: float = 1.0,
    weight: Tensor | None = None,
    ignore_index: int | None = None,
) -> Tensor:
    """``alpha * CE + (1 - alpha) * Jaccard``.

    CE is :func:`bce` for binary logits and :func:`cross_entropy` for multi-class ones;
    Jaccard is :func:`soft_jaccard` with ``mode`` and ``smooth``. ``weight`` and
    ``ignore_index`` are passed to both terms.

    Parameters
    ----------
    logits : Tensor
        ``(N, 1, *spatial)`` (binary) or ``(N, C, *spatial)`` (multi-class).
    target : Tensor
        As for the two terms.
    alpha : float
        Weight of the cross-entropy term, in ``[0, 1]``.
    mode : {"1-J", "-logJ"}
        Jaccard form.
    smooth : float
        Jaccard smoothing, >= 0.
    weight : Tensor, optional
        Per-pixel weight map ``(N, *spatial)``.
    ignore_index : int, optional
        Target value excluded from both terms.

    Returns
    -------
    Tensor
        Scalar loss.
    """
    a = _finite_float("alpha", alpha, low=0.0, high=1.0)
    _check_logits(logits)
    ce_fn = bce if _is_binary(logits) else cross_entropy
    ce = ce_fn(logits, target, weight=weight, ignore_index=ignore_index)
    jac = soft_jaccard(logits, target, mode=mode, smooth=smooth, weight=weight, ignore_index=ignore_index)
    return a * ce + (1.0 - a) * jac
