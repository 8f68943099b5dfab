"""Loss options checked where the functions take them: every refusal's whole message (it names the option and
its bounds), the focal modulation for gamma = 1, and CombinedLoss' terms (the U-Net border's options are in
test_losses_weights.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.nn import functional as F

from segflow.errors import ConfigError, InputError
from segflow.training.losses import (
    BCEWithLogitsLoss,
    CombinedLoss,
    bce,
    combo_loss,
    cross_entropy,
    focal_loss,
    soft_dice,
    soft_jaccard,
    tversky,
    weighted_bce,
)

BINARY = (torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]]]), torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]))
SOFTMAX = (torch.tensor([[[[0.5, -1.0]], [[2.0, 0.0]], [[0.1, 0.3]]]]), torch.tensor([[[1, 2]]]))
BOUNDS = r"; expected a finite number in \[0, inf\]; fix the loss config$"


@pytest.mark.parametrize(("call", "message"), [
    (lambda: weighted_bce(*BINARY, pos_weight=-1.0), r"^pos_weight=-1\.0" + BOUNDS),
    (lambda: weighted_bce(*BINARY, neg_weight=-2.0), r"^neg_weight=-2\.0" + BOUNDS),
    (lambda: tversky(*BINARY, alpha=-0.1), r"^alpha=-0\.1" + BOUNDS),
    (lambda: tversky(*BINARY, beta=-0.1), r"^beta=-0\.1" + BOUNDS),
    (lambda: focal_loss(*BINARY, alpha=-0.25), r"^alpha=-0\.25; expected a finite number in \[0, 1\]; fix the loss "
                                                r"config$"),
    (lambda: focal_loss(*SOFTMAX, alpha=[0.2, -1.0, 0.3]), r"^alpha=\[0\.2, -1\.0, 0\.3\]; expected a non-empty "
                                                             r"sequence of finite weights >= 0, one per class$"),
    (lambda: focal_loss(*BINARY, alpha=[0.5]),
     r"^alpha=\[0\.5\] is per-class but the outputs are sigmoids; pass a float in \[0, 1\] \(weight of the "
     r"positives, RetinaNet uses 0\.25\)$"),
    (lambda: focal_loss(torch.zeros(1, 3, 4, 5), torch.zeros(1, 4, 5, dtype=torch.long), alpha=0.25),
     r"^alpha=0\.25 is a single float but the logits have 3 classes; pass one alpha per class$"),
])
def test_refusals_name_the_option_and_its_bounds(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()


def test_zero_weights_and_alphas_are_allowed() -> None:
    assert float(weighted_bce(*BINARY, pos_weight=0.0, neg_weight=0.0)) == 0.0
    assert float(focal_loss(*BINARY, alpha=0.0, gamma=0.0)) == pytest.approx(
        float(weighted_bce(*BINARY, pos_weight=0.0, neg_weight=1.0)))
    assert float(tversky(*BINARY, alpha=0.0, beta=0.0)) == 0.0


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_focal_modulation_is_one_minus_pt_to_the_gamma(gamma: float) -> None:
    logits, target = SOFTMAX
    logpt = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    expected = (-(1 - logpt.exp()) ** gamma * logpt).mean()
    torch.testing.assert_close(focal_loss(logits, target, gamma=gamma), expected)
    assert not torch.isclose(expected, -logpt.mean()), "the modulation changes the loss"


@pytest.mark.parametrize(("terms", "message"), [
    (5, r"^CombinedLoss terms=5; expected a non-empty list of \(weight, loss\)$"),
    ([], r"^CombinedLoss terms=\[\]; expected a non-empty list of \(weight, loss\)$"),
    ("bce", r"^CombinedLoss terms='bce'; expected a non-empty list of \(weight, loss\)$"),
    ([(0.5, BCEWithLogitsLoss(), 1.0)], r"^CombinedLoss term 0 is \(0\.5, BCEWithLogitsLoss\(\), 1\.0\); expected a "
                                         r"\(weight, nn\.Module loss\) pair, e\.g\. \(0\.5, BCEWithLogitsLoss\(\)\)$"),
    ([(1.0, BCEWithLogitsLoss()), (0.5, "bce")], r"^CombinedLoss term 1 is \(0\.5, 'bce'\); expected"),
    ([(1.0, BCEWithLogitsLoss()), (-0.5, BCEWithLogitsLoss())], r"^CombinedLoss weight of term 1=-0\.5" + BOUNDS),
])
def test_combined_loss_terms_are_checked(terms: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CombinedLoss(terms)  # type: ignore[arg-type]


def test_combined_loss_is_the_weighted_sum() -> None:
    combined = CombinedLoss([(0.25, BCEWithLogitsLoss()), (2.0, BCEWithLogitsLoss())])
    torch.testing.assert_close(combined(*BINARY), 2.25 * BCEWithLogitsLoss()(*BINARY))


@pytest.mark.parametrize(("logits", "target", "message"), [
    ((1, 1, 4, 5), (1, 4, 6), r"^binary target has shape \(1, 4, 6\); expected \(1, 4, 5\) or \(1, 1, 4, 5\) to match "
                              r"logits \(1, 1, 4, 5\)$"),
    ((1, 3, 4, 5), (1, 2, 4, 5), r"^multi-label target has shape \(1, 2, 4, 5\); expected \(1, 3, 4, 5\) to match "
                                 r"logits \(1, 3, 4, 5\)$"),
    ((1, 2, 4, 5), (1, 4, 5), r"^sigmoid target has shape \(1, 4, 5\) but the logits \(1, 2, 4, 5\) have 2 channels; "
                              r"expected 1 channel \(binary\), or a target \(1, 2, 4, 5\) of 0/1 per class "
                              r"\(multi-label\); use cross_entropy for class indices$"),
])
def test_sigmoid_targets_of_the_wrong_shape_are_refused_with_the_shapes(logits: tuple[int, ...],
                                                                         target: tuple[int, ...], message: str) -> None:
    with pytest.raises(InputError, match=message):
        bce(torch.zeros(logits), torch.zeros(target))


@pytest.mark.parametrize(("channels", "kind"), [(1, "binary"), (3, "multi-label")])
def test_a_sigmoid_target_outside_0_1_is_refused_with_its_value(channels: int, kind: str) -> None:
    target = torch.zeros(1, channels, 4, 5)
    target[0, -1, 2, 3] = 2.0  # exactly one bad value
    with pytest.raises(InputError, match=rf"^{kind} target contains 2; expected values in \[0, 1\] \(or "
                                         r"ignore_index=None\); for class indices use softmax \(multi-class\) logits$"):
        bce(torch.zeros(1, channels, 4, 5), target)


@pytest.mark.parametrize("region", ["dice", "jaccard"])
@pytest.mark.parametrize("kind", ["binary", "softmax"])
def test_combo_is_alpha_ce_plus_the_region_term_both_weighted(region: str, kind: str) -> None:
    gen = torch.Generator().manual_seed(1)
    channels = 1 if kind == "binary" else 3
    logits = torch.randn((2, channels, 5, 6), generator=gen, dtype=torch.float64)
    if kind == "binary":
        target = (torch.rand((2, 5, 6), generator=gen) > 0.5).to(torch.float64)
    else:
        target = torch.randint(0, 3, (2, 5, 6), generator=gen)
    target[0, 0, :3] = 255
    weight = torch.rand((2, 5, 6), generator=gen, dtype=torch.float64) * 4
    ce = (bce if kind == "binary" else cross_entropy)(logits, target, weight=weight, ignore_index=255)
    term = (soft_dice(logits, target, smooth=0.5, weight=weight, ignore_index=255) if region == "dice" else
            soft_jaccard(logits, target, smooth=0.5, weight=weight, ignore_index=255))
    got = combo_loss(logits, target, alpha=0.3, smooth=0.5, weight=weight, ignore_index=255, region=region)
    torch.testing.assert_close(got, 0.3 * ce + 0.7 * term)
    unweighted = soft_dice(logits, target, smooth=0.5, ignore_index=255) if region == "dice" else \
        soft_jaccard(logits, target, smooth=0.5, ignore_index=255)
    assert not torch.isclose(term, unweighted), "the weight map changes the region term"


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: combo_loss(*BINARY, alpha=-0.1), ConfigError,
     r"^alpha=-0\.1; expected a finite number in \[0, 1\]; fix the loss config$"),
    (lambda: combo_loss(*SOFTMAX, pixel="focal"), ConfigError,
     r"^pixel='focal'; expected 'bce', 'ce' or None \(the one that fits the logits\)$"),
    (lambda: combo_loss(*SOFTMAX, pixel="bce", region="dice"), InputError,
     r"^bce\+dice got softmax logits \(1, 3, 1, 2\); use ce\+dice for softmax outputs$"),
    (lambda: combo_loss(*BINARY, pixel="ce"), InputError,
     r"^ce\+jaccard got sigmoid logits \(1, 1, 2, 2\); use bce\+jaccard for sigmoid outputs$"),
])
def test_combo_refusals_say_what_fits(call: Callable[[], object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(("call", "message"), [
    (lambda: soft_dice(*SOFTMAX, classes=5), r"^classes=5; expected"),
    (lambda: soft_dice(*SOFTMAX, classes=[-1]), r"^classes contains -1; expected non-negative int class indices$"),
    (lambda: soft_dice(*SOFTMAX, classes=[1.5]), r"^classes contains 1\.5; expected non-negative int class indices$"),
    (lambda: soft_dice(*SOFTMAX, classes=[3]), r"^classes contains 3 but the logits have 3 classes; use indices in "
                                               r"\[0, 3\)$"),
    (lambda: soft_dice(*BINARY, classes=[0]), r"^classes=\[0\] given for binary logits \(1, 1, 2, 2\); classes= "
                                              r"applies to multi-class or multi-label logits \(C >= 2\); drop it$"),
    (lambda: soft_dice(*BINARY, smooth=-1.0), r"^smooth=-1\.0" + BOUNDS),
    (lambda: combo_loss(*BINARY, mode="J"), r"^mode='J'; expected one of \['1-J', '-logJ'\]$"),
    (lambda: combo_loss(*BINARY, region="tversky"), r"^region='tversky'; expected 'jaccard' or 'dice'$"),
    (lambda: combo_loss(*BINARY, region="dice", mode="-logJ"),
     r"^mode='-logJ' is a Jaccard form; a Dice term is 1 - Dice: drop mode$"),
    (lambda: soft_dice(*BINARY, multilabel=1), r"^multilabel=1; expected true \(one independent sigmoid per class\) "
                                               r"or false$"),
])
def test_region_option_refusals_in_full(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()


def test_the_upper_bound_itself_is_allowed() -> None:
    torch.testing.assert_close(combo_loss(*BINARY, alpha=1.0), bce(*BINARY))
    assert float(focal_loss(*BINARY, alpha=1.0)) > 0.0


def test_a_ratio_below_one_is_not_taken_for_an_empty_class() -> None:
    """Jaccard without smoothing of a pixel predicted at p = 0.5 where the target is 0: J = 0 / 0.5, the loss 1."""
    loss = soft_jaccard(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1), smooth=0.0)
    assert float(loss) == 1.0


@pytest.mark.parametrize("loss", [soft_dice, soft_jaccard, tversky])
@pytest.mark.parametrize("kind", ["binary", "softmax", "multilabel"])
def test_a_pixel_weight_of_two_counts_the_pixel_twice(loss: Callable[..., torch.Tensor], kind: str) -> None:
    """Region sums are weighted sums: a weight of 2 equals the pixel appearing twice (closed form of the weights)."""
    gen = torch.Generator().manual_seed(4)
    channels = 1 if kind == "binary" else 3
    logits = torch.randn((1, channels, 3, 4), generator=gen, dtype=torch.float64)
    if kind == "softmax":
        target = torch.randint(0, 3, (1, 3, 4), generator=gen)
    else:
        target = (torch.rand((1, channels, 3, 4), generator=gen) > 0.5).to(torch.float64)
    weight = torch.ones((1, 3, 4), dtype=torch.float64)
    weight[..., 0] = 2.0  # the first column counts twice
    multilabel = {"multilabel": True} if kind == "multilabel" else {}
    twice = loss(torch.cat([logits[..., :1], logits], -1), torch.cat([target[..., :1], target], -1), **multilabel)
    torch.testing.assert_close(loss(logits, target, weight=weight, **multilabel), twice)


def test_selected_classes_of_a_multilabel_region_loss_are_those_planes() -> None:
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn((2, 3, 4, 5), generator=gen, dtype=torch.float64)
    target = (torch.rand((2, 3, 4, 5), generator=gen) > 0.5).to(torch.float64)
    weight = torch.rand((2, 4, 5), generator=gen, dtype=torch.float64)
    for loss in (soft_dice, soft_jaccard, tversky):
        torch.testing.assert_close(loss(logits, target, classes=[0, 2], weight=weight, multilabel=True),
                                   loss(logits[:, [0, 2]], target[:, [0, 2]], weight=weight, multilabel=True))


def test_cross_entropy_class_weights_and_build_loss_outputs_are_refused_by_name() -> None:
    from segflow.training.losses import CrossEntropyLoss, build_loss

    with pytest.raises(ConfigError, match=r"^class_weights=\[-1\.0\]; expected a non-empty sequence of finite weights "
                                          r">= 0, one per class$"):
        CrossEntropyLoss(class_weights=[-1.0])
    with pytest.raises(ConfigError, match=r"^output='logits'; expected 'softmax' or 'sigmoid'$"):
        build_loss("dice", output="logits")  # type: ignore[arg-type]


LOGITS = torch.zeros(2, 3, 4, 5)
LABELS = torch.zeros(2, 4, 5, dtype=torch.long)


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: bce(LOGITS.numpy(), LABELS), InputError,
     r"^logits is a ndarray; expected a torch\.Tensor; convert with torch\.as_tensor$"),
    (lambda: bce(torch.zeros(2, 3), LABELS), InputError,
     r"^logits has shape \(2, 3\); expected \(N, C, \*spatial\) with >= 1 spatial axis, e\.g\. \(N, C, H, W\); add "
     r"the batch/channel axes with unsqueeze$"),
    (lambda: cross_entropy(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)), InputError,
     r"^cross_entropy got logits \(1, 1, 2, 2\) with 1 channel; expected C >= 2; use bce for binary$"),
    (lambda: cross_entropy(LOGITS, LABELS, class_weights=[-1.0, 1.0, 1.0]), ConfigError,
     r"^class_weights=\[-1\.0, 1\.0, 1\.0\]; expected a non-empty sequence of finite weights >= 0, one per class$"),
    (lambda: cross_entropy(LOGITS, LABELS, class_weights=[1.0, float("nan"), 1.0]), ConfigError,
     r"^class_weights=\[1\.0, nan, 1\.0\]; expected a non-empty sequence"),
    (lambda: cross_entropy(LOGITS, LABELS, class_weights=[[1.0, 2.0], [3.0]]), ConfigError,
     r"^class_weights=\[\[1\.0, 2\.0\], \[3\.0\]\]; expected a non-empty sequence"),
    (lambda: cross_entropy(LOGITS, LABELS, class_weights=[1.0, 2.0]), ConfigError,
     r"^class_weights has 2 entries but the logits have 3 classes; give one weight per class$"),
    (lambda: cross_entropy(LOGITS, LABELS[:, :3]), InputError,
     r"^multi-class target has shape \(2, 3, 5\); expected \(2, 4, 5\) \(N, \*spatial\) of class indices to match "
     r"logits \(2, 3, 4, 5\); squeeze a channel axis if present$"),
    (lambda: cross_entropy(LOGITS, LABELS.bool()), InputError,
     r"^multi-class target has dtype torch\.bool; expected integer class indices; cast with target\.long\(\)$"),
    (lambda: cross_entropy(LOGITS, LABELS.float()), InputError, r"^multi-class target has dtype torch\.float32"),
    (lambda: cross_entropy(LOGITS, LABELS, weight=torch.ones(2, 4, 4)), InputError,
     r"^weight map has shape \(2, 4, 4\); expected a tensor of shape \(2, 4, 5\) \(N, \*spatial\) to match logits "
     r"\(2, 3, 4, 5\)$"),
    (lambda: cross_entropy(LOGITS, LABELS, weight=[[1.0]]), InputError, r"^weight map has shape list; expected"),
    (lambda: cross_entropy(LOGITS, LABELS, weight=-torch.ones(2, 4, 5)), InputError,
     r"^weight map contains negative or non-finite values; expected finite weights >= 0$"),
])
def test_input_refusals_in_full(call: Callable[[], object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


def test_zero_class_weights_and_a_channel_axis_on_the_weight_map_are_allowed() -> None:
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn((2, 3, 4, 5), generator=gen)
    labels = torch.randint(0, 3, (2, 4, 5), generator=gen)
    weight = torch.rand((2, 4, 5), generator=gen)
    torch.testing.assert_close(cross_entropy(logits, labels, weight=weight[:, None]),
                               cross_entropy(logits, labels, weight=weight))
    zero = cross_entropy(logits, labels, class_weights=[0.0, 1.0, 1.0])
    torch.testing.assert_close(zero, (F.cross_entropy(logits, labels, reduction="none") * (labels > 0)).mean())


@pytest.mark.parametrize("loss", ["ce", "bce", "focal"])
def test_pixel_losses_are_the_weighted_mean_of_per_pixel_losses(loss: str) -> None:
    """sum(w_i * loss_i) / n over a batch of two (closed form, with torch's unreduced losses)."""
    gen = torch.Generator().manual_seed(7)
    weight = torch.rand((2, 4, 5), generator=gen, dtype=torch.float64)
    if loss == "bce":
        logits = torch.randn((2, 1, 4, 5), generator=gen, dtype=torch.float64)
        target = (torch.rand((2, 4, 5), generator=gen) > 0.5).to(torch.float64)
        per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
        got = bce(logits, target, weight=weight)
    else:
        logits = torch.randn((2, 3, 4, 5), generator=gen, dtype=torch.float64)
        target = torch.randint(0, 3, (2, 4, 5), generator=gen)
        per_pixel = F.cross_entropy(logits, target, reduction="none")
        if loss == "focal":
            pt = torch.exp(-per_pixel)
            per_pixel = (1 - pt) ** 2 * per_pixel
        got = cross_entropy(logits, target, weight=weight) if loss == "ce" else focal_loss(logits, target,
                                                                                          weight=weight)
    torch.testing.assert_close(got, (weight * per_pixel).mean())


def test_a_float64_weight_map_keeps_the_logits_dtype() -> None:
    logits = torch.zeros(2, 3, 4, 5)
    assert cross_entropy(logits, LABELS, weight=torch.ones(2, 4, 5, dtype=torch.float64)).dtype == torch.float32


@pytest.mark.parametrize(("name", "output", "message"), [
    ("bce", "softmax", r"^loss 'bce' does not fit a softmax model \(ce is its softmax counterpart\); losses for "
                       r"softmax outputs: ce, cross_entropy, focal, "),
    ("ce", "sigmoid", r"^loss 'ce' does not fit a sigmoid model; losses for sigmoid outputs: bce, weighted_bce, "),
])
def test_build_loss_says_which_losses_fit(name: str, output: str, message: str) -> None:
    from segflow.training.losses import build_loss

    with pytest.raises(ConfigError, match=message):
        build_loss(name, output=output)  # type: ignore[arg-type]
