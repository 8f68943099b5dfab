"""The losses as :class:`torch.nn.Module` s that check their options when built, and their weighted sum.

Each module is called as ``loss(logits, target, weight=None)``; :func:`~segflow.training.losses.build_loss`
builds one from a config name or dict.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from segflow.errors import ConfigError

from ._common import _check_ignore_index, _check_multilabel, _class_vector, _finite_float, _float_logits
from .pixel import _check_focal, bce, cross_entropy, focal_loss, weighted_bce
from .region import (
    _JACCARD_MODES,
    JaccardMode,
    PixelName,
    RegionName,
    _check_classes,
    _check_combo,
    _check_smooth,
    combo_loss,
    generalized_dice,
    soft_dice,
    soft_jaccard,
    tversky,
)

__all__ = [
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
]


class _LossModule(nn.Module):
    """Base: ``forward(logits, target, weight=None)`` calls the wrapped function."""

    ignore_index: int | None

    def __init__(self, ignore_index: int | None = None) -> None:
        super().__init__()
        self.ignore_index = _check_ignore_index(ignore_index)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """Compute the loss; ``weight`` is an optional ``(N, *spatial)`` pixel weight map."""
        raise NotImplementedError


class CrossEntropyLoss(_LossModule):
    """Module form of :func:`cross_entropy`; ``class_weights`` is kept as a buffer."""

    class_weights: Tensor | None

    def __init__(
        self, class_weights: Sequence[float] | Tensor | None = None, ignore_index: int | None = None
    ) -> None:
        super().__init__(ignore_index)
        self.register_buffer("class_weights", _class_vector("class_weights", class_weights))

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """See :func:`cross_entropy`."""
        return cross_entropy(
            logits, target, class_weights=self.class_weights, weight=weight, ignore_index=self.ignore_index
        )


class BCEWithLogitsLoss(_LossModule):
    """Module form of :func:`bce` (takes logits, like every loss here)."""

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """See :func:`bce`."""
        return bce(logits, target, weight=weight, ignore_index=self.ignore_index)


class WeightedBCELoss(_LossModule):
    """Module form of :func:`weighted_bce`."""

    def __init__(
        self, pos_weight: float = 1.0, neg_weight: float = 1.0, ignore_index: int | None = None
    ) -> None:
        super().__init__(ignore_index)
        self.pos_weight = _finite_float("pos_weight", pos_weight, low=0.0)
        self.neg_weight = _finite_float("neg_weight", neg_weight, low=0.0)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """See :func:`weighted_bce`."""
        return weighted_bce(
            logits,
            target,
            pos_weight=self.pos_weight,
            neg_weight=self.neg_weight,
            weight=weight,
            ignore_index=self.ignore_index,
        )


class FocalLoss(_LossModule):
    """Module form of :func:`focal_loss`; a per-class ``alpha`` is kept as a buffer."""

    alpha_vector: Tensor | None

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = None,
        ignore_index: int | None = None,
        multilabel: bool = False,
    ) -> None:
        super().__init__(ignore_index)
        self.multilabel = _check_multilabel(multilabel)
        self.gamma, alpha_checked = _check_focal(gamma, alpha)
        self.alpha_scalar = alpha_checked if isinstance(alpha_checked, float) else None
        self.register_buffer("alpha_vector", alpha_checked if isinstance(alpha_checked, Tensor) else None)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """See :func:`focal_loss`."""
        alpha = self.alpha_vector if self.alpha_vector is not None else self.alpha_scalar
        return focal_loss(logits, target, gamma=self.gamma, alpha=alpha, weight=weight,
                          ignore_index=self.ignore_index, multilabel=self.multilabel)


class SoftJaccardLoss(_LossModule):
    """Module form of :func:`soft_jaccard`."""

    def __init__(
        self,
        mode: JaccardMode = "1-J",
        smooth: float = 1.0,
        classes: Sequence[int] | None = None,
        per_image: bool = False,
        ignore_index: int | None = None,
        multilabel: bool = False,
    ) -> None:
        super().__init__(ignore_index)
        if mode not in _JACCARD_MODES:
            raise ConfigError(f"mode={mode!r}; expected one of {list(_JACCARD_MODES)}")
        self.mode: JaccardMode = mode
        self.smooth = _check_smooth(smooth)
        self.classes = _check_classes(classes)
        self.per_image = bool(per_image)
        self.multilabel = _check_multilabel(multilabel)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """See :func:`soft_jaccard`."""
        return soft_jaccard(
            logits,
            target,
            mode=self.mode,
            smooth=self.smooth,
            classes=self.classes,
            per_image=self.per_image,
            weight=weight,
            ignore_index=self.ignore_index,
            multilabel=self.multilabel,
        )


class SoftDiceLoss(_LossModule):
    """Module form of :func:`soft_dice`."""

    def __init__(
        self,
        smooth: float = 1.0,
        classes: Sequence[int] | None = None,
        per_image: bool = False,
        ignore_index: int | None = None,
        multilabel: bool = False,
    ) -> None:
        super().__init__(ignore_index)
        self.smooth = _check_smooth(smooth)
        self.classes = _check_classes(classes)
        self.per_image = bool(per_image)
        self.multilabel = _check_multilabel(multilabel)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """See :func:`soft_dice`."""
        return soft_dice(
            logits,
            target,
            smooth=self.smooth,
            classes=self.classes,
            per_image=self.per_image,
            weight=weight,
            ignore_index=self.ignore_index,
            multilabel=self.multilabel,
        )


class GeneralizedDiceLoss(_LossModule):
    """Module form of :func:`~segflow.training.losses.region.generalized_dice` (Sudre et al. 2017)."""

    def __init__(self, smooth: float = 1e-5, per_image: bool = False, ignore_index: int | None = None,
                 multilabel: bool = False) -> None:
        super().__init__(ignore_index)
        self.smooth = _check_smooth(smooth)
        self.per_image = bool(per_image)
        self.multilabel = _check_multilabel(multilabel)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """See :func:`~segflow.training.losses.region.generalized_dice`."""
        return generalized_dice(logits, target, smooth=self.smooth, per_image=self.per_image, weight=weight,
                                ignore_index=self.ignore_index, multilabel=self.multilabel)


class TverskyLoss(_LossModule):
    """Module form of :func:`~segflow.training.losses.region.tversky` (``alpha`` weighs FP, ``beta`` FN)."""

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, smooth: float = 1.0,
                 classes: Sequence[int] | None = None, per_image: bool = False, ignore_index: int | None = None,
                 multilabel: bool = False) -> None:
        super().__init__(ignore_index)
        self.alpha = _finite_float("alpha", alpha, low=0.0)
        self.beta = _finite_float("beta", beta, low=0.0)
        self.smooth = _check_smooth(smooth)
        self.classes = _check_classes(classes)
        self.per_image = bool(per_image)
        self.multilabel = _check_multilabel(multilabel)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """See :func:`~segflow.training.losses.region.tversky`."""
        return tversky(logits, target, alpha=self.alpha, beta=self.beta, smooth=self.smooth, classes=self.classes,
                       per_image=self.per_image, weight=weight, ignore_index=self.ignore_index,
                       multilabel=self.multilabel)


class ComboLoss(_LossModule):
    """Module form of :func:`combo_loss`: ``alpha * CE + (1 - alpha) * Jaccard``, CE fitting the logits.

    The subclasses fix the terms: :class:`BCEJaccardLoss` (``bce+jaccard``), :class:`BCEDiceLoss`
    (``bce+dice``), :class:`CEJaccardLoss` (``ce+jaccard``), :class:`CEDiceLoss` (``ce+dice``).
    """

    region: RegionName = "jaccard"
    pixel: PixelName | None = None

    def __init__(
        self,
        alpha: float = 0.5,
        mode: JaccardMode = "1-J",
        smooth: float = 1.0,
        ignore_index: int | None = None,
        multilabel: bool = False,
    ) -> None:
        super().__init__(ignore_index)
        self.alpha = _finite_float("alpha", alpha, low=0.0, high=1.0)
        _check_combo(mode, self.region, self.pixel)
        self.mode: JaccardMode = mode
        self.smooth = _check_smooth(smooth)
        self.multilabel = _check_multilabel(multilabel)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """See :func:`combo_loss`."""
        return combo_loss(
            logits,
            target,
            alpha=self.alpha,
            mode=self.mode,
            smooth=self.smooth,
            weight=weight,
            ignore_index=self.ignore_index,
            multilabel=self.multilabel,
            region=self.region,
            pixel=self.pixel,
        )


class BCEJaccardLoss(ComboLoss):
    """``alpha * BCE + (1 - alpha) * soft Jaccard`` on sigmoid outputs (binary or multi-label)."""

    pixel: PixelName | None = "bce"


class CEJaccardLoss(ComboLoss):
    """``alpha * CE + (1 - alpha) * soft Jaccard`` on softmax outputs."""

    pixel: PixelName | None = "ce"


class BCEDiceLoss(ComboLoss):
    """``alpha * BCE + (1 - alpha) * soft Dice`` on sigmoid outputs (binary or multi-label)."""

    region: RegionName = "dice"
    pixel: PixelName | None = "bce"

    def __init__(self, alpha: float = 0.5, smooth: float = 1.0, ignore_index: int | None = None,
                 multilabel: bool = False) -> None:
        super().__init__(alpha, "1-J", smooth, ignore_index, multilabel)


class CEDiceLoss(BCEDiceLoss):
    """``alpha * CE + (1 - alpha) * soft Dice`` on softmax outputs."""

    pixel: PixelName | None = "ce"


class CombinedLoss(nn.Module):
    """Weighted sum of loss modules: ``sum(w_k * loss_k(logits, target, weight=weight))``.

    Parameters
    ----------
    terms : sequence of (float, nn.Module)
        Pairs ``(weight, loss)``; weights finite and >= 0; each loss is called as
        ``loss(logits, target, weight=weight)``.
    """

    def __init__(self, terms: Sequence[tuple[float, nn.Module]]) -> None:
        super().__init__()
        if isinstance(terms, str | bytes) or not isinstance(terms, Sequence) or len(terms) == 0:
            raise ConfigError(f"CombinedLoss terms={terms!r}; expected a non-empty list of (weight, loss)")
        weights: list[float] = []
        losses: list[nn.Module] = []
        for k, term in enumerate(terms):
            if not isinstance(term, tuple | list) or len(term) != 2 or not isinstance(term[1], nn.Module):
                raise ConfigError(
                    f"CombinedLoss term {k} is {term!r}; expected a (weight, nn.Module loss) pair, "
                    "e.g. (0.5, BCEWithLogitsLoss())"
                )
            weights.append(_finite_float(f"CombinedLoss weight of term {k}", term[0], low=0.0))
            losses.append(term[1])
        self.weights = weights
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """Return the weighted sum of the terms."""
        total = logits.new_zeros((), dtype=_float_logits(logits).dtype)
        for w, loss in zip(self.weights, self.losses, strict=True):
            total = total + w * loss(logits, target, weight=weight)
        return total
