"""Generalized Dice (Sudre et al. 2017) and Tversky losses against MONAI's GeneralizedDiceLoss and TverskyLoss
on random logits, softmax, binary sigmoid and multi-label; ignored pixels; the closed forms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segflow.training.losses import build_loss, generalized_dice, soft_dice, tversky

monai_losses = pytest.importorskip("monai.losses")

IGNORE = 255


def _softmax_case(seed: int, n: int = 3, c: int = 4, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn((n, c, size, size), generator=gen, dtype=torch.float64) * 2
    target = torch.randint(0, c, (n, size, size), generator=gen)
    target[0][target[0] == c - 1] = 0  # a class absent from one image (per-image weights)
    return logits, target


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("smooth", [1e-5, 0.5])
def test_generalized_dice_matches_monai_softmax(per_image: bool, smooth: float) -> None:
    for seed in range(4):
        logits, target = _softmax_case(seed)
        ref = monai_losses.GeneralizedDiceLoss(softmax=True, to_onehot_y=True, batch=not per_image,
                                               smooth_nr=smooth, smooth_dr=smooth)(logits, target[:, None])
        ours = generalized_dice(logits, target, smooth=smooth, per_image=per_image)
        # MONAI computes the weights from float32 volumes (ground_o.float()): agreement to ~1e-9
        assert torch.allclose(ours, ref, rtol=1e-7, atol=0), (seed, float(ours), float(ref))


def test_generalized_dice_weights_in_closed_form() -> None:
    """Two classes, hard predictions: GDL = 1 - 2 sum w I / sum w (P + Y) with w = 1 / Y**2."""
    target = torch.zeros((1, 4, 4), dtype=torch.long)
    target[0, :1] = 1  # Y = (12, 4)
    logits = torch.full((1, 2, 4, 4), -50.0, dtype=torch.float64)
    logits[0, 0] = 50.0  # predicts class 0 everywhere: P = (16, 0), I = (12, 0)
    w = torch.tensor([1 / 144, 1 / 16], dtype=torch.float64)
    expected = 1 - (2 * w[0] * 12) / (w[0] * (16 + 12) + w[1] * (0 + 4))
    assert torch.allclose(generalized_dice(logits, target, smooth=0.0), expected, atol=1e-12)
    # An absent class gets the largest weight of the others (MONAI's rule) and changes nothing here.
    three = torch.cat([logits, torch.full((1, 1, 4, 4), -50.0, dtype=torch.float64)], dim=1)
    assert torch.allclose(generalized_dice(three, target, smooth=0.0), expected, atol=1e-12)


def test_generalized_dice_sigmoid_binary_and_multilabel_match_monai() -> None:
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn((2, 1, 10, 10), generator=gen, dtype=torch.float64)
    target = (torch.rand((2, 10, 10), generator=gen) > 0.6).double()
    ref = monai_losses.GeneralizedDiceLoss(sigmoid=True, batch=True)(logits, target[:, None])
    assert torch.allclose(generalized_dice(logits, target), ref, rtol=1e-7)
    logits = torch.randn((2, 3, 10, 10), generator=gen, dtype=torch.float64)
    planes = (torch.rand((2, 3, 10, 10), generator=gen) > 0.5).double()
    ref = monai_losses.GeneralizedDiceLoss(sigmoid=True, batch=False)(logits, planes)
    assert torch.allclose(generalized_dice(logits, planes, multilabel=True, per_image=True), ref, rtol=1e-7)


@pytest.mark.parametrize(("alpha", "beta"), [(0.5, 0.5), (0.3, 0.7), (0.9, 0.1)])
@pytest.mark.parametrize("per_image", [False, True])
def test_tversky_matches_monai_softmax(alpha: float, beta: float, per_image: bool) -> None:
    for seed in range(4):
        logits, target = _softmax_case(seed)
        ref = monai_losses.TverskyLoss(softmax=True, to_onehot_y=True, alpha=alpha, beta=beta, smooth_nr=1.0,
                                       smooth_dr=1.0, batch=not per_image)(logits, target[:, None])
        ours = tversky(logits, target, alpha=alpha, beta=beta, smooth=1.0, per_image=per_image)
        assert torch.allclose(ours, ref, rtol=1e-10), (seed, float(ours), float(ref))


def test_tversky_sigmoid_matches_monai_and_half_half_is_dice() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn((2, 3, 9, 9), generator=gen, dtype=torch.float64)
    planes = (torch.rand((2, 3, 9, 9), generator=gen) > 0.5).double()
    ref = monai_losses.TverskyLoss(sigmoid=True, alpha=0.2, beta=0.8, smooth_nr=1e-5, smooth_dr=1e-5,
                                   batch=True)(logits, planes)
    assert torch.allclose(tversky(logits, planes, alpha=0.2, beta=0.8, smooth=1e-5, multilabel=True), ref, rtol=1e-10)
    logits, target = _softmax_case(11)
    assert torch.allclose(tversky(logits, target, smooth=0.5), soft_dice(logits, target, smooth=1.0), rtol=1e-12)
    # alpha weighs false positives: a model that predicts a class everywhere is punished by alpha only.
    all_one = torch.stack([torch.full((1, 4, 4), -30.0), torch.full((1, 4, 4), 30.0)], dim=1).double()
    target = torch.zeros((1, 4, 4), dtype=torch.long)
    target[0, 0] = 1  # class 1: I = 4, FP = 12, FN = 0; class 0: I = 0, FP = 0, FN = 12
    loss = tversky(all_one, target, alpha=0.25, beta=0.5, smooth=0.0)
    expected = ((1 - 4 / (4 + 0.25 * 12)) + (1 - 0 / (0.5 * 12))) / 2
    assert torch.allclose(loss, torch.tensor(expected, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("name", ["generalized_dice", "tversky"])
def test_ignored_pixels_are_left_out(name: str) -> None:
    """Ignoring the right half equals MONAI on the left half alone."""
    logits, target = _softmax_case(5)
    ignored = target.clone()
    ignored[..., 6:] = IGNORE
    loss = build_loss({"name": name, "ignore_index": IGNORE}, output="softmax")
    if name == "tversky":
        ref = monai_losses.TverskyLoss(softmax=True, to_onehot_y=True, smooth_nr=1.0, smooth_dr=1.0, batch=True)
    else:
        ref = monai_losses.GeneralizedDiceLoss(softmax=True, to_onehot_y=True, batch=True)
    left = ref(logits[..., :6].contiguous(), target[:, None, :, :6].contiguous())
    assert torch.allclose(loss(logits, ignored), left, rtol=1e-7)
    # and the ignored pixels get no gradient
    x = logits.clone().requires_grad_(True)
    loss(x, ignored).backward()
    assert x.grad is not None and float(x.grad[..., 6:].abs().max()) == 0.0


def test_both_losses_train_and_fit_both_output_kinds() -> None:
    for output in ("softmax", "sigmoid"):
        for name in ("generalized_dice", "tversky"):
            build_loss(name, output=output)
    torch.manual_seed(0)
    target = torch.zeros((2, 16, 16), dtype=torch.long)
    target[:, 4:9, 5:12] = 1
    x = torch.zeros((2, 2, 16, 16), requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.1)
    loss_fn = build_loss({"name": "tversky", "alpha": 0.3, "beta": 0.7}, output="softmax")
    first = float(loss_fn(x, target).detach())
    for _ in range(50):
        opt.zero_grad()
        loss_fn(x, target).backward()
        opt.step()
    assert float(loss_fn(x, target)) < 0.1 * first
    assert float((F.softmax(x, 1).argmax(1) == target).float().mean()) == 1.0
