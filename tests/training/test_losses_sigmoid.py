"""Sigmoid losses (binary and multi-label) against independent references, and losses refused by output kind.

References: ``torch.nn.functional.binary_cross_entropy_with_logits``, torchvision's ``sigmoid_focal_loss``
written out here, MONAI's ``FocalLoss`` and ``(Masked)DiceLoss`` with ``sigmoid=True``, on random logits
with ignored elements and pixel weight maps.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, FocalLoss, MaskedDiceLoss

from segflow.errors import ConfigError, InputError
from segflow.training.losses import (
    BCEDiceLoss,
    BCEJaccardLoss,
    CEDiceLoss,
    CEJaccardLoss,
    ComboLoss,
    bce,
    build_loss,
    combo_loss,
    focal_loss,
    losses_for,
    soft_dice,
    soft_jaccard,
    weighted_bce,
)

IGNORE = 255


def _sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """torchvision.ops.sigmoid_focal_loss (reduction 'none'), as torchvision writes it."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss


def _example(channels: int, seed: int = 0, ignore: bool = True) -> tuple[torch.Tensor, ...]:
    """Logits (2, K, 9, 11) float64, 0/1 targets with ~15 % ignored elements, their float 0/1 form, valid mask."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(2, channels, 9, 11, generator=g, dtype=torch.float64)
    y = (torch.rand(2, channels, 9, 11, generator=g) < 0.4).long()
    valid = torch.rand(2, channels, 9, 11, generator=g) > (0.15 if ignore else -1)
    target = torch.where(valid, y, torch.full_like(y, IGNORE))
    return logits, target, y.double(), valid


def _weight_map(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 1 + 9 * torch.rand(2, 9, 11, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("channels", [1, 3])
def test_bce_against_torch(channels: int) -> None:
    logits, target, y, valid = _example(channels)
    ref = F.binary_cross_entropy_with_logits(logits[valid], y[valid])
    assert torch.allclose(bce(logits, target, ignore_index=IGNORE), ref, rtol=1e-12, atol=0)
    w = _weight_map()
    elementwise = F.binary_cross_entropy_with_logits(logits, y, reduction="none") * w.unsqueeze(1)
    ref_w = elementwise[valid].sum() / valid.sum()
    assert torch.allclose(bce(logits, target, weight=w, ignore_index=IGNORE), ref_w, rtol=1e-12, atol=0)
    if channels == 1:  # binary targets may come without the channel axis
        assert torch.allclose(bce(logits, target[:, 0], ignore_index=IGNORE), ref, rtol=1e-12, atol=0)


def test_weighted_bce_against_torch_pos_weight() -> None:
    logits, target, y, valid = _example(3, seed=2)
    element = torch.where(y == 1, 1.0, 0.5).double()
    pos = torch.tensor(4.0, dtype=torch.float64)
    ref = F.binary_cross_entropy_with_logits(logits, y, weight=element, pos_weight=pos, reduction="none")[valid].mean()
    got = weighted_bce(logits, target, pos_weight=4.0, neg_weight=0.5, ignore_index=IGNORE)
    assert torch.allclose(got, ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize(("channels", "alpha", "gamma"), [(1, 0.25, 2.0), (3, 0.25, 2.0), (3, 0.7, 0.5)])
def test_focal_against_torchvision_formula(channels: int, alpha: float, gamma: float) -> None:
    logits, target, y, valid = _example(channels, seed=3)
    w = _weight_map(4)
    ref = (_sigmoid_focal_loss(logits, y, alpha, gamma) * w.unsqueeze(1))[valid].sum() / valid.sum()
    got = focal_loss(logits, target, alpha=alpha, gamma=gamma, weight=w, ignore_index=IGNORE, multilabel=True)
    assert torch.allclose(got, ref, rtol=1e-10, atol=0)
    module = build_loss({"name": "focal", "alpha": alpha, "gamma": gamma, "ignore_index": IGNORE}, output="sigmoid")
    assert torch.allclose(module(logits, target, weight=w), ref, rtol=1e-10, atol=0)


def test_focal_against_monai() -> None:
    logits, _, y, _ = _example(3, seed=5, ignore=False)
    logits, y = logits.float(), y.float()  # MONAI's alpha factor is float32
    ref = FocalLoss(use_softmax=False, gamma=2.0, alpha=0.25, reduction="mean")(logits, y)
    assert torch.allclose(focal_loss(logits, y, gamma=2.0, alpha=0.25, multilabel=True), ref, rtol=1e-5, atol=0)
    plain = FocalLoss(use_softmax=False, gamma=1.5, reduction="mean")(logits, y)
    assert torch.allclose(focal_loss(logits, y, gamma=1.5, multilabel=True), plain, rtol=1e-5, atol=0)


@pytest.mark.parametrize("per_image", [False, True])
def test_dice_against_monai(per_image: bool) -> None:
    logits, _, y, _ = _example(3, seed=6, ignore=False)
    ref = DiceLoss(sigmoid=True, batch=not per_image, smooth_nr=1.0, smooth_dr=1.0)(logits, y)
    got = soft_dice(logits, y, per_image=per_image, multilabel=True)
    assert torch.allclose(got, ref, rtol=1e-10, atol=0)


def test_dice_with_ignored_pixels_against_monai_masked() -> None:
    logits, _, y, _ = _example(3, seed=7, ignore=False)
    g = torch.Generator().manual_seed(8)
    pixel_valid = torch.rand(2, 1, 9, 11, generator=g) > 0.2  # a pixel is ignored in every class
    target = torch.where(pixel_valid, y.long(), torch.full_like(y.long(), IGNORE))
    ref = MaskedDiceLoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)(logits, y, mask=pixel_valid.double())
    assert torch.allclose(soft_dice(logits, target, ignore_index=IGNORE, multilabel=True), ref, rtol=1e-10, atol=0)


def test_jaccard_against_monai() -> None:
    """MONAI's Jaccard is (2I + s) / (2U + s), ours (I + s) / (U + s): equal with MONAI's smoothing 2s."""
    logits, _, y, _ = _example(3, seed=9, ignore=False)
    ref = DiceLoss(sigmoid=True, jaccard=True, batch=True, smooth_nr=2.0, smooth_dr=2.0)(logits, y)
    assert torch.allclose(soft_jaccard(logits, y, smooth=1.0, multilabel=True), ref, rtol=1e-10, atol=0)


def _jaccard_reference(logits: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    m = valid.double() * w.unsqueeze(1)
    p = torch.sigmoid(logits)
    inter = (m * p * y).sum(dim=(0, 2, 3))
    union = (m * p).sum(dim=(0, 2, 3)) + (m * y).sum(dim=(0, 2, 3)) - inter
    return (1 - (inter + 1) / (union + 1)).mean()


def test_bce_plus_jaccard_is_real_bce_plus_sigmoid_jaccard() -> None:
    logits, target, y, valid = _example(3, seed=10)
    w = _weight_map(11)
    elementwise = F.binary_cross_entropy_with_logits(logits, y, reduction="none") * w.unsqueeze(1)
    bce_ref = elementwise[valid].sum() / valid.sum()
    ref = 0.3 * bce_ref + 0.7 * _jaccard_reference(logits, y, valid, w)
    loss = build_loss({"name": "bce+jaccard", "alpha": 0.3, "ignore_index": IGNORE}, output="sigmoid")
    assert isinstance(loss, BCEJaccardLoss)
    assert torch.allclose(loss(logits, target, weight=w), ref, rtol=1e-10, atol=0)


def test_bce_plus_dice_against_monai() -> None:
    logits, _, y, _ = _example(3, seed=12, ignore=False)
    dice = DiceLoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)(logits, y)
    ref = 0.5 * F.binary_cross_entropy_with_logits(logits, y) + 0.5 * dice
    loss = build_loss("bce+dice", output="sigmoid")
    assert isinstance(loss, BCEDiceLoss)
    assert torch.allclose(loss(logits, y), ref, rtol=1e-10, atol=0)


def test_binary_sigmoid_dice_is_foreground_dice() -> None:
    logits, target, y, _ = _example(1, seed=13, ignore=False)
    ref = DiceLoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)(logits, y)
    assert torch.allclose(build_loss("dice", output="sigmoid")(logits, target[:, 0]), ref, rtol=1e-10, atol=0)


def test_softmax_combinations_keep_their_terms() -> None:
    g = torch.Generator().manual_seed(14)
    logits = torch.randn(2, 4, 6, 7, generator=g, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 6, 7), generator=g)
    ce_jaccard = build_loss({"name": "ce+jaccard", "alpha": 0.4}, output="softmax")
    assert isinstance(ce_jaccard, CEJaccardLoss)
    assert torch.equal(ce_jaccard(logits, target), combo_loss(logits, target, alpha=0.4))
    dice = DiceLoss(softmax=True, to_onehot_y=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
    ref = 0.5 * F.cross_entropy(logits, target) + 0.5 * dice(logits, target.unsqueeze(1))
    ce_dice = build_loss("ce+dice", output="softmax")
    assert isinstance(ce_dice, CEDiceLoss)
    assert torch.allclose(ce_dice(logits, target), ref, rtol=1e-10, atol=0)
    assert isinstance(build_loss("combo", output="softmax"), ComboLoss)


def test_multilabel_gradients_reach_every_channel() -> None:
    logits, target, _, _ = _example(3, seed=15)
    for name in losses_for("sigmoid"):
        x = logits.clone().requires_grad_(True)
        spec = {"name": name, "ignore_index": IGNORE}
        build_loss(spec, output="sigmoid")(x, target).backward()
        assert x.grad is not None and torch.isfinite(x.grad).all(), name
        assert all(float(x.grad[:, k].abs().sum()) > 0 for k in range(3)), name


# --------------------------------------------------------------------------- refusals


def test_losses_by_output_kind() -> None:
    assert set(losses_for("sigmoid")) == {"bce", "weighted_bce", "focal", "jaccard", "dice", "bce+jaccard",
                                          "bce+dice", "combo", "generalized_dice", "tversky"}
    assert {"ce", "cross_entropy", "focal", "dice", "jaccard", "ce+dice", "ce+jaccard"} <= set(losses_for("softmax"))
    assert not {"bce", "weighted_bce", "bce+jaccard", "bce+dice"} & set(losses_for("softmax"))


@pytest.mark.parametrize(("spec", "output", "words"), [
    ("bce", "softmax", ["'bce' does not fit a softmax model", "ce, cross_entropy", "ce+jaccard"]),
    ({"name": "bce+jaccard", "alpha": 0.5}, "softmax", ["ce+jaccard is its softmax counterpart"]),
    ("ce", "sigmoid", ["'ce' does not fit a sigmoid model", "bce, weighted_bce"]),
    ("ce+dice", "sigmoid", ["bce+dice"]),
    ({"name": "focal", "alpha": [0.2, 0.8]}, "sigmoid", ["per-class", "RetinaNet"]),
    ({"name": "dice", "multilabel": False}, "sigmoid", ["multilabel is set by the model's output"]),
])
def test_loss_that_does_not_fit_is_refused_in_one_line(spec: object, output: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        loss = build_loss(spec, output=output)  # type: ignore[arg-type]
        loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2))
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_focal_scalar_alpha_is_refused_for_softmax() -> None:
    loss = build_loss({"name": "focal", "alpha": 0.25}, output="softmax")
    with pytest.raises(ConfigError, match="one alpha per class"):
        loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_bad_multilabel_targets() -> None:
    logits = torch.zeros(1, 3, 2, 2)
    with pytest.raises(InputError, match=r"expected 1 channel \(binary\), or a target"):
        bce(logits, torch.zeros(1, 2, 2))
    with pytest.raises(InputError, match="multi-label target contains 2"):
        soft_dice(logits, torch.full((1, 3, 2, 2), 2.0), multilabel=True)
    with pytest.raises(InputError, match="bce\\+jaccard got softmax logits"):
        BCEJaccardLoss()(logits, torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(InputError, match="ce\\+dice got sigmoid logits"):
        CEDiceLoss(multilabel=True)(logits, torch.zeros(1, 3, 2, 2))
