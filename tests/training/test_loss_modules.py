"""Each loss module computes its function with the options it was given, each option and the weight map
changing the value, its defaults are the function's, and bad options are refused by name."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import torch
from torch import nn

from segflow.errors import ConfigError
from segflow.training.losses import (
    BCEDiceLoss,
    BCEJaccardLoss,
    BCEWithLogitsLoss,
    CEDiceLoss,
    CEJaccardLoss,
    CrossEntropyLoss,
    FocalLoss,
    GeneralizedDiceLoss,
    SoftDiceLoss,
    SoftJaccardLoss,
    TverskyLoss,
    WeightedBCELoss,
    bce,
    combo_loss,
    cross_entropy,
    focal_loss,
    generalized_dice,
    soft_dice,
    soft_jaccard,
    tversky,
    weighted_bce,
)

IGNORE = 255


def _inputs(kind: str, spatial: tuple[int, ...] = (6, 7)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, a target with some ignored pixels, and a pixel weight map, for binary, softmax or multi-label."""
    gen = torch.Generator().manual_seed(3)
    n = 2
    channels = 1 if kind == "binary" else 3
    logits = torch.randn((n, channels, *spatial), generator=gen, dtype=torch.float64) * 2
    if kind == "softmax":
        target = torch.randint(0, 3, (n, *spatial), generator=gen)
        target[0, 0] = IGNORE
    else:
        target = (torch.rand((n, channels, *spatial), generator=gen) > 0.6).to(torch.float64)
        target[0, :, 0] = IGNORE
    weight = torch.rand((n, *spatial), generator=gen, dtype=torch.float64) * 3
    return logits, target, weight


# module, function, options that differ from the defaults, kind of output
CASES: list[tuple[type[nn.Module], Callable[..., torch.Tensor], dict[str, Any], str]] = [
    (CrossEntropyLoss, cross_entropy, {"class_weights": [0.5, 2.0, 1.0], "ignore_index": IGNORE}, "softmax"),
    (BCEWithLogitsLoss, bce, {"ignore_index": IGNORE}, "binary"),
    (WeightedBCELoss, weighted_bce, {"pos_weight": 3.0, "neg_weight": 0.25, "ignore_index": IGNORE}, "binary"),
    (FocalLoss, focal_loss, {"gamma": 1.5, "alpha": [0.2, 0.5, 0.3], "ignore_index": IGNORE}, "softmax"),
    (FocalLoss, focal_loss, {"gamma": 3.0, "alpha": 0.25, "multilabel": True, "ignore_index": IGNORE}, "multilabel"),
    (SoftJaccardLoss, soft_jaccard, {"mode": "-logJ", "smooth": 0.5, "classes": [1, 2], "per_image": True,
                                     "ignore_index": IGNORE}, "softmax"),
    (SoftJaccardLoss, soft_jaccard, {"multilabel": True, "ignore_index": IGNORE}, "multilabel"),
    (SoftDiceLoss, soft_dice, {"smooth": 2.0, "classes": [0, 2], "per_image": True, "ignore_index": IGNORE},
     "softmax"),
    (SoftDiceLoss, soft_dice, {"multilabel": True, "ignore_index": IGNORE}, "multilabel"),
    (GeneralizedDiceLoss, generalized_dice, {"smooth": 0.5, "per_image": True, "ignore_index": IGNORE}, "softmax"),
    (GeneralizedDiceLoss, generalized_dice, {"multilabel": True, "ignore_index": IGNORE}, "multilabel"),
    (TverskyLoss, tversky, {"alpha": 0.7, "beta": 0.2, "smooth": 0.5, "classes": [1], "per_image": True,
                            "ignore_index": IGNORE}, "softmax"),
    (TverskyLoss, tversky, {"multilabel": True, "ignore_index": IGNORE}, "multilabel"),
    (CEJaccardLoss, partial(combo_loss, pixel="ce", region="jaccard"),
     {"alpha": 0.3, "mode": "-logJ", "smooth": 0.5, "ignore_index": IGNORE}, "softmax"),
    (BCEJaccardLoss, partial(combo_loss, pixel="bce", region="jaccard"),
     {"alpha": 0.8, "smooth": 2.0, "ignore_index": IGNORE}, "binary"),
    (BCEJaccardLoss, partial(combo_loss, pixel="bce", region="jaccard"),
     {"multilabel": True, "ignore_index": IGNORE}, "multilabel"),
    (BCEDiceLoss, partial(combo_loss, pixel="bce", region="dice"), {"alpha": 0.8, "smooth": 2.0,
                                                                     "ignore_index": IGNORE}, "binary"),
    (BCEDiceLoss, partial(combo_loss, pixel="bce", region="dice"),
     {"multilabel": True, "ignore_index": IGNORE}, "multilabel"),
    (CEDiceLoss, partial(combo_loss, pixel="ce", region="dice"), {"alpha": 0.1, "smooth": 0.5,
                                                                   "ignore_index": IGNORE}, "softmax"),
]
IDS = [f"{module.__name__}-{kind}" for module, _, _, kind in CASES]




@pytest.mark.parametrize(("module", "function", "options", "kind"), CASES, ids=IDS)
def test_each_option_and_the_weight_map_reach_the_function(module: type[nn.Module], function: Callable[..., Any],
                                                           options: dict[str, Any], kind: str) -> None:
    logits, target, weight = _inputs(kind)
    base = {"ignore_index": IGNORE} if "ignore_index" in options else {}
    if "multilabel" in options:
        base["multilabel"] = True
    reference = function(logits, target, **base)
    for name, value in options.items():
        chosen = {**base, name: value}
        expected = function(logits, target, **chosen)
        torch.testing.assert_close(module(**chosen)(logits, target), expected, rtol=0, atol=0)
        if name not in base:
            assert not torch.isclose(expected, reference), f"{name}={value!r} changes the loss here"
    expected = function(logits, target, weight=weight, **options)
    torch.testing.assert_close(module(**options)(logits, target, weight=weight), expected, rtol=0, atol=0)
    assert not torch.isclose(expected, function(logits, target, **options)), "the weight map changes the loss"


@pytest.mark.parametrize(("module", "function", "options", "kind"), CASES, ids=IDS)
def test_the_defaults_are_the_function_s(module: type[nn.Module], function: Callable[..., Any],
                                         options: dict[str, Any], kind: str) -> None:
    logits, target, _ = _inputs(kind)
    base = {"multilabel": True} if kind == "multilabel" else {}
    if kind != "softmax":
        target = target.clamp(max=1)  # no ignored entries without ignore_index
    else:
        target = target % 3
    torch.testing.assert_close(module(**base)(logits, target), function(logits, target, **base), rtol=0, atol=0)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: WeightedBCELoss(pos_weight=-1.0), r"^pos_weight=-1\.0; expected a finite number in \[0, inf\]; "),
    (lambda: WeightedBCELoss(neg_weight=-0.5), r"^neg_weight=-0\.5; expected a finite number in \[0, inf\]; "),
    (lambda: TverskyLoss(alpha=-1.0), r"^alpha=-1\.0; expected a finite number in \[0, inf\]; "),
    (lambda: TverskyLoss(beta=float("nan")), r"^beta=nan; expected a finite number in \[0, inf\]; "),
    (lambda: CEDiceLoss(alpha=1.5), r"^alpha=1\.5; expected a finite number in \[0, 1\]; fix the loss config$"),
])
def test_bad_options_are_refused_by_name(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


def test_zero_weights_are_allowed() -> None:
    logits, target, _ = _inputs("binary")
    target = target.clamp(max=1)
    assert float(WeightedBCELoss(pos_weight=0.0, neg_weight=0.0)(logits, target)) == 0.0
    assert float(TverskyLoss(alpha=0.0, beta=0.0)(logits, target)) == 0.0, "only true positives count: (I+s)/(I+s)"


def test_focal_alpha_of_the_wrong_length_is_refused_by_name() -> None:
    logits, target, _ = _inputs("softmax")
    with pytest.raises(ConfigError, match=r"^alpha has 2 entries but the logits have 3 classes; give one weight per "
                                          r"class$"):
        FocalLoss(alpha=[0.5, 0.5])(logits, target % 3)


@pytest.mark.parametrize(("module", "function", "options", "kind"), CASES, ids=IDS)
def test_one_spatial_axis_gives_the_loss_of_the_same_pixels_in_two(module: type[nn.Module],
                                                                     function: Callable[..., Any],
                                                                     options: dict[str, Any], kind: str) -> None:
    """Losses take any number of spatial axes: (N, C, L) is (N, C, L, 1) (softmax over the class axis even
    where torch's implicit softmax axis would be another)."""
    logits, target, weight = _inputs(kind, spatial=(9,))
    line = module(**options)(logits, target, weight=weight)
    torch.testing.assert_close(line, module(**options)(logits[..., None], target[..., None], weight=weight[..., None]))
