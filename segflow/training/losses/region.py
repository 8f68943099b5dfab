"""Region losses: soft Jaccard (IoU), soft Dice, Generalized Dice, Tversky, and combinations with cross-entropy.

Soft overlaps of probabilities and one-hot targets summed over the batch (or per image), per
class; logits ``(N, C, *spatial)``, targets ``(N, *spatial)`` (softmax) or ``(N, C, *spatial)``
(multi-label sigmoid), see :mod:`segflow.training.losses`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from segflow.errors import ConfigError, InputError

from ._common import (
    _binary_target,
    _check_ignore_index,
    _check_logits,
    _finite_float,
    _float_logits,
    _is_binary,
    _is_sigmoid,
    _multiclass_target,
    _pixel_weight,
)
from .pixel import bce, cross_entropy

__all__ = ["JaccardMode", "combo_loss", "generalized_dice", "soft_dice", "soft_jaccard", "tversky"]

JaccardMode = Literal["1-J", "-logJ"]
_JACCARD_MODES = ("1-J", "-logJ")
RegionName = Literal["jaccard", "dice"]
PixelName = Literal["bce", "ce"]


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
    multilabel: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per image and class: ``sum(m*p*y)``, ``sum(m*p)``, ``sum(m*y)``, each ``(N, K)``.

    ``m`` is the per-pixel weight times the valid mask (per element for sigmoid targets); ``K``
    is 1 (binary) or the number of selected classes. ``p`` is ``sigmoid(logits)`` for binary or
    ``multilabel`` logits (each channel on its own), else ``softmax(logits, dim=1)``.
    """
    _check_logits(logits)
    logits = _float_logits(logits)
    ignore_index = _check_ignore_index(ignore_index)
    w = _pixel_weight(logits, weight)
    if classes is not None:
        if _is_binary(logits):
            raise ConfigError(
                f"classes={list(classes)} given for binary logits {tuple(logits.shape)}; "
                "classes= applies to multi-class or multi-label logits (C >= 2); drop it"
            )
        bad = [c for c in classes if c >= logits.shape[1]]
        if bad:
            raise ConfigError(
                f"classes contains {bad[0]} but the logits have {logits.shape[1]} classes; "
                f"use indices in [0, {logits.shape[1]})"
            )
    if _is_sigmoid(logits, multilabel):
        y, valid = _binary_target(logits, target, ignore_index)
        prob, onehot = torch.sigmoid(logits), y
        mask = valid.to(prob.dtype) if w is None else valid.to(prob.dtype) * w.unsqueeze(1)
        if classes is not None:
            prob, onehot, mask = prob[:, list(classes)], onehot[:, list(classes)], mask[:, list(classes)]
    else:
        yi, valid = _multiclass_target(logits, target, ignore_index)
        prob = torch.softmax(logits, dim=1)
        onehot = torch.zeros_like(prob).scatter_(1, yi.unsqueeze(1), 1.0)
        if classes is not None:
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
    multilabel: bool = False,
) -> Tensor:
    """Soft Jaccard (IoU) loss on sigmoid (binary, multi-label) or softmax (multi-class) probabilities.

    Per class ``J = (I + smooth) / (U + smooth)`` with ``I = sum(p*y)`` and
    ``U = sum(p) + sum(y) - I`` (sums over pixels, weighted by ``weight``);
    ``0/0`` (``smooth=0`` and a class absent in both) counts as ``J = 1``. The loss is
    ``1 - J`` (``mode="1-J"``) or ``-log J`` (``mode="-logJ"``, always >= ``1 - J``),
    averaged over classes (and images, if ``per_image``).

    Parameters
    ----------
    logits : Tensor
        ``(N, 1, *spatial)`` (binary) or ``(N, C, *spatial)`` (multi-class or multi-label).
    target : Tensor
        Binary: ``(N, [1,] *spatial)`` in ``[0, 1]``; multi-label: ``(N, C, *spatial)`` 0/1 per
        class; multi-class: ``(N, *spatial)`` class indices.
    mode : {"1-J", "-logJ"}
        Form of the loss.
    smooth : float
        Added to numerator and denominator, >= 0.
    classes : sequence of int, optional
        ``C >= 2`` only: the classes to average over (default all ``C``, background included).
    per_image : bool
        If True compute J per image and average; otherwise pool the batch into one volume.
    weight : Tensor, optional
        Per-pixel weight map ``(N, *spatial)``.
    ignore_index : int, optional
        Target value whose pixels are excluded.
    multilabel : bool
        ``C >= 2`` channels are independent sigmoids (targets ``(N, C, *spatial)``), not a softmax.

    Returns
    -------
    Tensor
        Scalar loss.
    """
    if mode not in _JACCARD_MODES:
        raise ConfigError(f"mode={mode!r}; expected one of {list(_JACCARD_MODES)}")
    s = _check_smooth(smooth)
    sums = _region_sums(logits, target, weight, ignore_index, _check_classes(classes), multilabel)
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
    multilabel: bool = False,
) -> Tensor:
    """Soft Dice loss ``1 - (2I + smooth) / (sum(p) + sum(y) + smooth)``, averaged over classes.

    Same modes, options and conventions as :func:`soft_jaccard`.

    Parameters
    ----------
    logits : Tensor
        ``(N, 1, *spatial)`` (binary) or ``(N, C, *spatial)`` (multi-class or multi-label).
    target : Tensor
        Binary: ``(N, [1,] *spatial)`` in ``[0, 1]``; multi-label: ``(N, C, *spatial)`` 0/1 per
        class; multi-class: ``(N, *spatial)`` class indices.
    smooth : float
        Added to numerator and denominator, >= 0.
    classes : sequence of int, optional
        ``C >= 2`` only: the classes to average over (default all).
    per_image : bool
        If True compute Dice per image and average; otherwise pool the batch.
    weight : Tensor, optional
        Per-pixel weight map ``(N, *spatial)``.
    ignore_index : int, optional
        Target value whose pixels are excluded.
    multilabel : bool
        ``C >= 2`` channels are independent sigmoids (targets ``(N, C, *spatial)``), not a softmax.

    Returns
    -------
    Tensor
        Scalar loss.
    """
    s = _check_smooth(smooth)
    sums = _region_sums(logits, target, weight, ignore_index, _check_classes(classes), multilabel)
    inter, psum, ysum = _pool(*sums, per_image)
    return (1.0 - _ratio(2.0 * inter + s, psum + ysum + s)).mean()


def generalized_dice(
    logits: Tensor,
    target: Tensor,
    *,
    smooth: float = 1e-5,
    per_image: bool = False,
    weight: Tensor | None = None,
    ignore_index: int | None = None,
    multilabel: bool = False,
) -> Tensor:
    """Generalized Dice loss (Sudre et al., DLMIA 2017): every class weighted by its inverse squared volume.

    ``GDL = 1 - (2 sum_c w_c I_c + smooth) / (sum_c w_c (P_c + Y_c) + smooth)`` with
    ``w_c = 1 / Y_c**2`` (``I``, ``P``, ``Y`` as in :func:`soft_jaccard`; the target volume ``Y_c``
    carries no gradient). A class absent from the target (``Y_c = 0``) gets the largest weight of
    the others, as MONAI's ``GeneralizedDiceLoss`` does (the tests compare with it). Pooled over the
    batch, or per image and averaged (``per_image``); other arguments as :func:`soft_dice`. The
    default ``smooth`` is MONAI's 1e-5: the weights are small (``1 / Y**2``), so a smooth of 1
    would swamp the ratio.
    """
    s = _check_smooth(smooth)
    sums = _region_sums(logits, target, weight, ignore_index, None, multilabel)
    inter, psum, ysum = _pool(*sums, per_image)
    w = 1.0 / ysum.detach() ** 2
    absent = torch.isinf(w)
    w = torch.where(absent, torch.zeros_like(w), w)
    w = w + absent * w.max(dim=1, keepdim=True).values
    numer = 2.0 * (w * inter).sum(1) + s
    denom = (w * (psum + ysum)).sum(1) + s
    return (1.0 - numer / denom).mean()


def tversky(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    smooth: float = 1.0,
    classes: Sequence[int] | None = None,
    per_image: bool = False,
    weight: Tensor | None = None,
    ignore_index: int | None = None,
    multilabel: bool = False,
) -> Tensor:
    """Tversky loss (Salehi et al., MLMI 2017): ``1 - (I + smooth) / (I + alpha FP + beta FN + smooth)`` per class.

    ``FP = P - I`` (predicted mass outside the class) and ``FN = Y - I`` (missed mass), averaged over
    classes (and images, if ``per_image``); ``beta > alpha`` weighs misses more (recall).
    ``alpha = beta = 0.5`` is :func:`soft_dice` with ``smooth`` doubled. Other arguments as
    :func:`soft_dice`; MONAI's ``TverskyLoss`` gives the same values (the tests compare).
    """
    a = _finite_float("alpha", alpha, low=0.0)
    b = _finite_float("beta", beta, low=0.0)
    s = _check_smooth(smooth)
    sums = _region_sums(logits, target, weight, ignore_index, _check_classes(classes), multilabel)
    inter, psum, ysum = _pool(*sums, per_image)
    return (1.0 - _ratio(inter + s, inter + a * (psum - inter) + b * (ysum - inter) + s)).mean()


def combo_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.5,
    mode: JaccardMode = "1-J",
    smooth: float = 1.0,
    weight: Tensor | None = None,
    ignore_index: int | None = None,
    multilabel: bool = False,
    region: RegionName = "jaccard",
    pixel: PixelName | None = None,
) -> Tensor:
    """``alpha * CE + (1 - alpha) * region loss`` (Jaccard or Dice).

    CE is :func:`bce` for sigmoid (binary or ``multilabel``) logits and :func:`cross_entropy`
    for softmax ones, or the one ``pixel`` names (``"bce"``, ``"ce"``; a mismatch with the logits
    is an error); the region term is :func:`soft_jaccard` with ``mode`` and ``smooth`` (``region=
    "jaccard"``) or :func:`soft_dice` with ``smooth`` (``"dice"``), on the same probabilities.
    ``weight`` and ``ignore_index`` are passed to both terms.

    Parameters
    ----------
    logits : Tensor
        ``(N, 1, *spatial)`` (binary) or ``(N, C, *spatial)`` (multi-class or multi-label).
    target : Tensor
        As for the two terms.
    alpha : float
        Weight of the cross-entropy term, in ``[0, 1]``.
    mode : {"1-J", "-logJ"}
        Jaccard form (``region="dice"`` takes ``"1-J"`` only).
    smooth : float
        Region-term smoothing, >= 0.
    weight : Tensor, optional
        Per-pixel weight map ``(N, *spatial)``.
    ignore_index : int, optional
        Target value excluded from both terms.
    multilabel : bool
        ``C >= 2`` channels are independent sigmoids (targets ``(N, C, *spatial)``), not a softmax.
    region : {"jaccard", "dice"}
        The region term.
    pixel : {"bce", "ce"}, optional
        The cross-entropy term; by default the one that fits the logits.

    Returns
    -------
    Tensor
        Scalar loss.
    """
    a = _finite_float("alpha", alpha, low=0.0, high=1.0)
    _check_combo(mode, region, pixel)
    _check_logits(logits)
    sigmoid = _is_sigmoid(logits, multilabel)
    if pixel is not None and (pixel == "bce") != sigmoid:
        kind = "sigmoid" if sigmoid else "softmax"
        raise InputError(f"{pixel}+{region} got {kind} logits {tuple(logits.shape)}; use "
                         f"{'bce' if sigmoid else 'ce'}+{region} for {kind} outputs")
    ce_fn = bce if sigmoid else cross_entropy
    ce = ce_fn(logits, target, weight=weight, ignore_index=ignore_index)
    if region == "dice":
        overlap = soft_dice(logits, target, smooth=smooth, weight=weight, ignore_index=ignore_index,
                            multilabel=multilabel)
    else:
        overlap = soft_jaccard(logits, target, mode=mode, smooth=smooth, weight=weight, ignore_index=ignore_index,
                               multilabel=multilabel)
    return a * ce + (1.0 - a) * overlap


def _check_combo(mode: str, region: str, pixel: str | None) -> None:
    if mode not in _JACCARD_MODES:
        raise ConfigError(f"mode={mode!r}; expected one of {list(_JACCARD_MODES)}")
    if region not in ("jaccard", "dice"):
        raise ConfigError(f"region={region!r}; expected 'jaccard' or 'dice'")
    if region == "dice" and mode != "1-J":
        raise ConfigError(f"mode={mode!r} is a Jaccard form; a Dice term is 1 - Dice: drop mode")
    if pixel not in (None, "bce", "ce"):
        raise ConfigError(f"pixel={pixel!r}; expected 'bce', 'ce' or None (the one that fits the logits)")
