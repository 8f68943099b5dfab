"""Tests for segflow.losses: hand-computed values on tiny tensors, options, gradients, errors."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from segflow.errors import ConfigError, InputError
from segflow.losses import (
    LOSS_NAMES,
    BCEWithLogitsLoss,
    CombinedLoss,
    ComboLoss,
    CrossEntropyLoss,
    FocalLoss,
    SoftDiceLoss,
    SoftJaccardLoss,
    WeightedBCELoss,
    bce,
    build_loss,
    combo_loss,
    cross_entropy,
    focal_loss,
    soft_dice,
    soft_jaccard,
    unet_weight_map,
    weighted_bce,
)

LN3 = math.log(3.0)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def t(values: list, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def close(value: torch.Tensor, expected: float, tol: float = 1e-9) -> bool:
    return math.isclose(float(value), expected, rel_tol=tol, abs_tol=tol)


# Binary example used throughout: logits 1x1x2x2, target 1x2x2.
BIN_LOGITS = t([[[[1.0, -2.0], [0.5, 3.0]]]])
BIN_TARGET = t([[[1.0, 0.0], [0.0, 1.0]]])
# per-pixel BCE: -log σ(x) for y=1, -log(1 - σ(x)) for y=0
BIN_PIXELS = [
    -math.log(sigmoid(1.0)),
    -math.log(1.0 - sigmoid(-2.0)),
    -math.log(1.0 - sigmoid(0.5)),
    -math.log(sigmoid(3.0)),
]

# Multi-class example: logits 1x3x1x2 (N, C, H, W), target 1x1x2.
MC_LOGITS = t([[[[1.0, 0.0]], [[2.0, 0.0]], [[3.0, 0.0]]]])
MC_TARGET = torch.tensor([[[2, 0]]])
MC_PIXELS = [
    -math.log(math.exp(3) / (math.exp(1) + math.exp(2) + math.exp(3))),  # pixel 0, true class 2
    math.log(3.0),  # pixel 1: uniform logits, p = 1/3 for the true class 0
]


# --------------------------------------------------------------------------- BCE


class TestBCE:
    def test_hand_computed_2d(self) -> None:
        assert close(bce(BIN_LOGITS, BIN_TARGET), sum(BIN_PIXELS) / 4)

    def test_target_with_channel_axis_is_the_same(self) -> None:
        assert close(bce(BIN_LOGITS, BIN_TARGET.unsqueeze(1)), sum(BIN_PIXELS) / 4)

    def test_hand_computed_3d(self) -> None:
        logits = BIN_LOGITS.reshape(1, 1, 2, 1, 2)  # (N, 1, D, H, W)
        target = BIN_TARGET.reshape(1, 2, 1, 2)
        assert close(bce(logits, target), sum(BIN_PIXELS) / 4)

    def test_numerically_stable_for_huge_logits(self) -> None:
        logits = t([[[[100.0, -100.0]]]], torch.float32).requires_grad_()
        target = t([[[1.0, 1.0]]], torch.float32)
        loss = bce(logits, target)
        # pixel 0: -log σ(100) ≈ 0; pixel 1: -log σ(-100) = log(1 + e^100) ≈ 100
        assert math.isclose(loss.item(), (0.0 + 100.0) / 2, rel_tol=1e-6)
        loss.backward()
        assert logits.grad is not None and torch.isfinite(logits.grad).all()

    def test_weight_map(self) -> None:
        weight = t([[[2.0, 0.0], [1.0, 1.0]]])
        expected = (2 * BIN_PIXELS[0] + 0 * BIN_PIXELS[1] + BIN_PIXELS[2] + BIN_PIXELS[3]) / 4
        assert close(bce(BIN_LOGITS, BIN_TARGET, weight=weight), expected)
        assert close(bce(BIN_LOGITS, BIN_TARGET, weight=weight.unsqueeze(1)), expected)

    def test_ignore_index_excludes_pixels_from_sum_and_count(self) -> None:
        target = t([[[1.0, 255.0], [0.0, 1.0]]])
        expected = (BIN_PIXELS[0] + BIN_PIXELS[2] + BIN_PIXELS[3]) / 3
        assert close(bce(BIN_LOGITS, target, ignore_index=255), expected)

    def test_all_ignored_gives_zero_with_finite_gradient(self) -> None:
        logits = BIN_LOGITS.clone().requires_grad_()
        loss = bce(logits, torch.full((1, 2, 2), 255.0, dtype=torch.float64), ignore_index=255)
        assert loss.item() == 0.0
        loss.backward()
        assert logits.grad is not None and (logits.grad == 0).all()

    def test_soft_labels(self) -> None:
        logits = t([[[[0.7]]]])
        expected = -(0.3 * math.log(sigmoid(0.7)) + 0.7 * math.log(1 - sigmoid(0.7)))
        assert close(bce(logits, t([[[0.3]]])), expected)

    def test_matches_torch_bce_with_logits(self) -> None:
        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(2, 1, 5, 6, generator=gen)
        target = (torch.rand(2, 5, 6, generator=gen) > 0.5).float()
        ref = F.binary_cross_entropy_with_logits(logits[:, 0], target)
        assert torch.allclose(bce(logits, target), ref)


class TestWeightedBCE:
    def test_pos_and_neg_weights(self) -> None:
        # positives (pixels 0 and 3) scaled by 3, negatives (1 and 2) by 0.5
        expected = (3 * BIN_PIXELS[0] + 0.5 * BIN_PIXELS[1] + 0.5 * BIN_PIXELS[2] + 3 * BIN_PIXELS[3]) / 4
        loss = weighted_bce(BIN_LOGITS, BIN_TARGET, pos_weight=3.0, neg_weight=0.5)
        assert close(loss, expected)

    def test_unit_weights_equal_bce(self) -> None:
        assert close(weighted_bce(BIN_LOGITS, BIN_TARGET), float(bce(BIN_LOGITS, BIN_TARGET)))

    def test_class_and_pixel_weights_multiply(self) -> None:
        weight = t([[[2.0, 1.0], [1.0, 0.5]]])
        expected = (3 * 2 * BIN_PIXELS[0] + BIN_PIXELS[1] + BIN_PIXELS[2] + 3 * 0.5 * BIN_PIXELS[3]) / 4
        assert close(weighted_bce(BIN_LOGITS, BIN_TARGET, pos_weight=3.0, weight=weight), expected)

    def test_module(self) -> None:
        module = WeightedBCELoss(pos_weight=3.0, neg_weight=0.5)
        expected = weighted_bce(BIN_LOGITS, BIN_TARGET, pos_weight=3.0, neg_weight=0.5)
        assert close(module(BIN_LOGITS, BIN_TARGET), float(expected))

    @pytest.mark.parametrize("kwargs", [{"pos_weight": -1.0}, {"neg_weight": math.inf}, {"pos_weight": "3"}])
    def test_bad_weights(self, kwargs: dict) -> None:
        with pytest.raises(ConfigError, match="weight"):
            weighted_bce(BIN_LOGITS, BIN_TARGET, **kwargs)
        with pytest.raises(ConfigError):
            WeightedBCELoss(**kwargs)


# --------------------------------------------------------------------------- cross-entropy


class TestCrossEntropy:
    def test_hand_computed_2d(self) -> None:
        assert close(cross_entropy(MC_LOGITS, MC_TARGET), sum(MC_PIXELS) / 2)

    def test_hand_computed_3d(self) -> None:
        logits = MC_LOGITS.reshape(1, 3, 2, 1, 1)
        target = MC_TARGET.reshape(1, 2, 1, 1)
        assert close(cross_entropy(logits, target), sum(MC_PIXELS) / 2)

    def test_class_weights_divide_by_pixel_count(self) -> None:
        # class 2 (pixel 0) weighted 2, class 0 (pixel 1) weighted 1; divided by 2 pixels
        loss = cross_entropy(MC_LOGITS, MC_TARGET, class_weights=[1.0, 1.0, 2.0])
        assert close(loss, (2 * MC_PIXELS[0] + MC_PIXELS[1]) / 2)

    def test_weight_map_and_ignore_index(self) -> None:
        assert close(
            cross_entropy(MC_LOGITS, MC_TARGET, weight=t([[[0.5, 4.0]]])),
            (0.5 * MC_PIXELS[0] + 4 * MC_PIXELS[1]) / 2,
        )
        target = torch.tensor([[[2, -1]]])
        assert close(cross_entropy(MC_LOGITS, target, ignore_index=-1), MC_PIXELS[0])

    def test_matches_torch_without_weights(self) -> None:
        gen = torch.Generator().manual_seed(1)
        logits = torch.randn(2, 4, 3, 5, 6, generator=gen)
        target = torch.randint(0, 4, (2, 3, 5, 6), generator=gen)
        assert torch.allclose(cross_entropy(logits, target), F.cross_entropy(logits, target))

    def test_module_keeps_class_weights_as_buffer(self) -> None:
        module = CrossEntropyLoss(class_weights=[1.0, 1.0, 2.0])
        assert "class_weights" in dict(module.named_buffers())
        assert close(module(MC_LOGITS, MC_TARGET), (2 * MC_PIXELS[0] + MC_PIXELS[1]) / 2)

    def test_uint8_target(self) -> None:
        assert close(cross_entropy(MC_LOGITS, MC_TARGET.to(torch.uint8)), sum(MC_PIXELS) / 2)


# --------------------------------------------------------------------------- focal


class TestFocal:
    def test_gamma_zero_equals_ce_and_bce(self) -> None:
        gen = torch.Generator().manual_seed(2)
        logits = torch.randn(2, 4, 5, 6, generator=gen)
        target = torch.randint(0, 4, (2, 5, 6), generator=gen)
        assert torch.allclose(focal_loss(logits, target, gamma=0.0), cross_entropy(logits, target))
        blogits = torch.randn(2, 1, 3, 5, 6, generator=gen)
        btarget = (torch.rand(2, 3, 5, 6, generator=gen) > 0.5).float()
        assert torch.allclose(focal_loss(blogits, btarget, gamma=0.0), bce(blogits, btarget))

    def test_binary_hand_computed(self) -> None:
        # logit 0 (p = 1/2), y = 1: (1 - 1/2)^2 * log 2; logit ln3 (p = 3/4), y = 0: (3/4)^2 * -log(1/4)
        logits = t([[[[0.0, LN3]]]])
        target = t([[[1.0, 0.0]]])
        px = [0.25 * math.log(2.0), (0.75**2) * -math.log(0.25)]
        assert close(focal_loss(logits, target, gamma=2.0), sum(px) / 2)
        # alpha weights positives by 0.25 and negatives by 0.75
        assert close(focal_loss(logits, target, gamma=2.0, alpha=0.25), (0.25 * px[0] + 0.75 * px[1]) / 2)

    def test_multiclass_hand_computed(self) -> None:
        # 2 classes, one pixel: logits (0, ln3) -> p = (1/4, 3/4), true class 1
        logits = t([[[[0.0]], [[LN3]]]])
        target = torch.tensor([[[1]]])
        expected = (0.25**2) * -math.log(0.75)
        assert close(focal_loss(logits, target, gamma=2.0), expected)
        assert close(focal_loss(logits, target, gamma=2.0, alpha=[0.1, 0.6]), 0.6 * expected)

    def test_down_weights_easy_pixels(self) -> None:
        logits = t([[[[4.0, 0.1]]]])
        target = t([[[1.0, 1.0]]])
        assert float(focal_loss(logits, target)) < float(bce(logits, target))

    def test_gradient_finite_with_fractional_gamma_and_saturated_logits(self) -> None:
        logits = t([[[[60.0, -60.0]], [[-60.0, 60.0]]]], torch.float32).requires_grad_()
        focal_loss(logits, torch.tensor([[[0, 1]]]), gamma=0.5).backward()
        assert logits.grad is not None and torch.isfinite(logits.grad).all()

    def test_module_and_ignore_index(self) -> None:
        module = FocalLoss(gamma=2.0, alpha=[0.1, 0.6], ignore_index=9)
        logits = t([[[[0.0, 5.0]], [[LN3, 0.0]]]])
        target = torch.tensor([[[1, 9]]])
        assert close(module(logits, target), 0.6 * (0.25**2) * -math.log(0.75))

    def test_bad_alpha_for_mode(self) -> None:
        with pytest.raises(ConfigError, match="per-class"):
            focal_loss(BIN_LOGITS, BIN_TARGET, alpha=[0.2, 0.8])
        with pytest.raises(ConfigError, match="one alpha per class"):
            focal_loss(MC_LOGITS, MC_TARGET, alpha=0.25)
        with pytest.raises(ConfigError, match="3 classes"):
            focal_loss(MC_LOGITS, MC_TARGET, alpha=[0.2, 0.8])


# --------------------------------------------------------------------------- Jaccard / Dice

# Binary region example: p = σ(logits) = (1/2, 3/4, 1/4, 1/2), y = (1, 1, 0, 0)
REG_LOGITS = t([[[[0.0, LN3], [-LN3, 0.0]]]])
REG_TARGET = t([[[1.0, 1.0], [0.0, 0.0]]])
REG_I = 0.5 + 0.75  # sum(p * y)
REG_P = 0.5 + 0.75 + 0.25 + 0.5  # sum(p)
REG_Y = 2.0  # sum(y)

# Multi-class region example: 2 classes, 2 pixels; p(class 1) = (3/4, 1/2), target (1, 0)
MREG_LOGITS = t([[[[0.0, 0.0]], [[LN3, 0.0]]]])
MREG_TARGET = torch.tensor([[[1, 0]]])
MREG_J0 = 0.5 / (0.75 + 1.0 - 0.5)  # I0 = 1/2, sum p0 = 3/4, sum y0 = 1
MREG_J1 = 0.75 / (1.25 + 1.0 - 0.75)  # I1 = 3/4, sum p1 = 5/4, sum y1 = 1


class TestJaccard:
    def test_binary_hand_computed(self) -> None:
        jac = (REG_I + 1.0) / (REG_P + REG_Y - REG_I + 1.0)  # = 2.25 / 3.75 = 0.6
        assert close(soft_jaccard(REG_LOGITS, REG_TARGET, smooth=1.0), 1.0 - jac)
        assert close(soft_jaccard(REG_LOGITS, REG_TARGET, mode="-logJ", smooth=1.0), -math.log(jac))
        jac0 = REG_I / (REG_P + REG_Y - REG_I)
        assert close(soft_jaccard(REG_LOGITS, REG_TARGET, smooth=0.0), 1.0 - jac0)

    def test_binary_3d(self) -> None:
        logits = REG_LOGITS.reshape(1, 1, 2, 2, 1)
        target = REG_TARGET.reshape(1, 2, 2, 1)
        assert close(soft_jaccard(logits, target, smooth=0.0), 1.0 - REG_I / (REG_P + REG_Y - REG_I))

    def test_multiclass_hand_computed(self) -> None:
        assert close(soft_jaccard(MREG_LOGITS, MREG_TARGET, smooth=0.0), ((1 - MREG_J0) + (1 - MREG_J1)) / 2)
        assert close(soft_jaccard(MREG_LOGITS, MREG_TARGET, smooth=0.0, classes=[1]), 1 - MREG_J1)
        assert close(
            soft_jaccard(MREG_LOGITS, MREG_TARGET, smooth=0.0, mode="-logJ"),
            (-math.log(MREG_J0) - math.log(MREG_J1)) / 2,
        )

    def test_per_image_vs_pooled(self) -> None:
        # image 0 is REG_*; image 1: p = (1/2, 1/2, 1/2, 1/2), y = (1, 0, 0, 0)
        logits = torch.cat([REG_LOGITS, torch.zeros_like(REG_LOGITS)])
        target = torch.cat([REG_TARGET, t([[[1.0, 0.0], [0.0, 0.0]]])])
        j0 = REG_I / (REG_P + REG_Y - REG_I)
        j1 = 0.5 / (2.0 + 1.0 - 0.5)
        pooled = (REG_I + 0.5) / (REG_P + 2.0 + REG_Y + 1.0 - REG_I - 0.5)
        assert close(soft_jaccard(logits, target, smooth=0.0, per_image=True), ((1 - j0) + (1 - j1)) / 2)
        assert close(soft_jaccard(logits, target, smooth=0.0), 1 - pooled)

    def test_perfect_prediction_is_near_zero(self) -> None:
        target = torch.tensor([[[0, 1, 2], [2, 1, 0]]])
        logits = F.one_hot(target, 3).movedim(-1, 1).double() * 40.0 - 20.0
        assert float(soft_jaccard(logits, target)) < 1e-6
        assert float(soft_jaccard(logits, target, mode="-logJ")) < 1e-6
        assert float(soft_jaccard(logits[:, 1:2], (target == 1).double())) < 1e-6

    def test_log_form_bounds_linear_form(self) -> None:
        gen = torch.Generator().manual_seed(3)
        for _ in range(5):
            logits = torch.randn(2, 3, 4, 5, generator=gen) * 3
            target = torch.randint(0, 3, (2, 4, 5), generator=gen)
            for per_image in (False, True):
                lin = soft_jaccard(logits, target, mode="1-J", per_image=per_image)
                log = soft_jaccard(logits, target, mode="-logJ", per_image=per_image)
                assert float(log) >= float(lin) - 1e-12

    def test_ignore_index_and_weight(self) -> None:
        # ignoring pixel 3 (p=1/2, y=0) removes it from sum(p)
        target = t([[[1.0, 1.0], [0.0, 255.0]]])
        expected = 1 - REG_I / (REG_P - 0.5 + REG_Y - REG_I)
        assert close(soft_jaccard(REG_LOGITS, target, smooth=0.0, ignore_index=255), expected)
        # a zero weight at that pixel is the same; weight 2 on pixel 0 doubles its p, y, p*y
        assert close(
            soft_jaccard(REG_LOGITS, REG_TARGET, smooth=0.0, weight=t([[[1.0, 1.0], [1.0, 0.0]]])), expected
        )
        i2, p2, y2 = REG_I + 0.5, REG_P + 0.5, REG_Y + 1.0
        weighted = soft_jaccard(REG_LOGITS, REG_TARGET, smooth=0.0, weight=t([[[2.0, 1.0], [1.0, 1.0]]]))
        assert close(weighted, 1 - i2 / (p2 + y2 - i2))

    def test_all_ignored_with_zero_smooth_is_zero_not_nan(self) -> None:
        target = torch.full((1, 2, 2), 255.0, dtype=torch.float64)
        assert float(soft_jaccard(REG_LOGITS, target, smooth=0.0, ignore_index=255)) == 0.0

    def test_module(self) -> None:
        module = SoftJaccardLoss(mode="-logJ", smooth=0.0, classes=[1])
        assert close(module(MREG_LOGITS, MREG_TARGET), -math.log(MREG_J1))

    def test_bad_args(self) -> None:
        with pytest.raises(ConfigError, match="mode"):
            soft_jaccard(REG_LOGITS, REG_TARGET, mode="J")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="smooth"):
            soft_jaccard(REG_LOGITS, REG_TARGET, smooth=-1.0)
        with pytest.raises(ConfigError, match="classes contains 5"):
            soft_jaccard(MREG_LOGITS, MREG_TARGET, classes=[5])
        with pytest.raises(ConfigError, match="multi-class"):
            soft_jaccard(REG_LOGITS, REG_TARGET, classes=[0])
        with pytest.raises(ConfigError, match="classes"):
            SoftJaccardLoss(classes=[])


class TestDice:
    def test_binary_hand_computed(self) -> None:
        # (2 * 1.25 + 1) / (2 + 2 + 1) = 0.7
        assert close(soft_dice(REG_LOGITS, REG_TARGET, smooth=1.0), 1 - (2 * REG_I + 1) / (REG_P + REG_Y + 1))
        assert close(soft_dice(REG_LOGITS, REG_TARGET, smooth=0.0), 1 - 2 * REG_I / (REG_P + REG_Y))

    def test_multiclass_hand_computed_and_3d(self) -> None:
        d0 = 2 * 0.5 / (0.75 + 1.0)
        d1 = 2 * 0.75 / (1.25 + 1.0)
        assert close(soft_dice(MREG_LOGITS, MREG_TARGET, smooth=0.0), ((1 - d0) + (1 - d1)) / 2)
        logits3d = MREG_LOGITS.reshape(1, 2, 1, 2, 1)
        assert close(soft_dice(logits3d, MREG_TARGET.reshape(1, 1, 2, 1), smooth=0.0, classes=[0]), 1 - d0)

    def test_perfect_prediction_is_near_zero(self) -> None:
        logits = (REG_TARGET.unsqueeze(1) * 2 - 1) * 30
        assert float(soft_dice(logits, REG_TARGET)) < 1e-6

    def test_ignore_index_changes_value(self) -> None:
        target = torch.tensor([[[1, 255]]])
        assert not close(
            soft_dice(MREG_LOGITS, target, ignore_index=255), float(soft_dice(MREG_LOGITS, MREG_TARGET))
        )

    def test_module(self) -> None:
        module = SoftDiceLoss(smooth=0.0, per_image=True)
        assert close(module(REG_LOGITS, REG_TARGET), 1 - 2 * REG_I / (REG_P + REG_Y))


# --------------------------------------------------------------------------- combinations


class TestCombo:
    def test_hand_computed(self) -> None:
        bce_value = (
            sum(
                -math.log(sigmoid(x)) if y else -math.log(1 - sigmoid(x))
                for x, y in [(0.0, 1), (LN3, 1), (-LN3, 0), (0.0, 0)]
            )
            / 4
        )
        jac = 1 - (REG_I + 1.0) / (REG_P + REG_Y - REG_I + 1.0)
        assert close(combo_loss(REG_LOGITS, REG_TARGET, alpha=0.3), 0.3 * bce_value + 0.7 * jac)
        assert close(ComboLoss(alpha=0.3)(REG_LOGITS, REG_TARGET), 0.3 * bce_value + 0.7 * jac)

    def test_multiclass_uses_cross_entropy(self) -> None:
        expected = 0.5 * float(cross_entropy(MREG_LOGITS, MREG_TARGET)) + 0.5 * float(
            soft_jaccard(MREG_LOGITS, MREG_TARGET, mode="-logJ")
        )
        assert close(combo_loss(MREG_LOGITS, MREG_TARGET, mode="-logJ"), expected)

    def test_combined_loss(self) -> None:
        module = CombinedLoss([(0.25, BCEWithLogitsLoss()), (2.0, SoftDiceLoss(smooth=0.0))])
        expected = 0.25 * float(bce(REG_LOGITS, REG_TARGET)) + 2.0 * (1 - 2 * REG_I / (REG_P + REG_Y))
        assert close(module(REG_LOGITS, REG_TARGET), expected)
        weight = t([[[1.0, 3.0], [1.0, 1.0]]])
        expected_w = 0.25 * float(bce(REG_LOGITS, REG_TARGET, weight=weight)) + 2.0 * float(
            soft_dice(REG_LOGITS, REG_TARGET, smooth=0.0, weight=weight)
        )
        assert close(module(REG_LOGITS, REG_TARGET, weight=weight), expected_w)

    @pytest.mark.parametrize("terms", [[], [(0.5, "bce")], [(-1.0, BCEWithLogitsLoss())], "bce"])
    def test_combined_loss_bad_terms(self, terms: object) -> None:
        with pytest.raises(ConfigError):
            CombinedLoss(terms)  # type: ignore[arg-type]

    def test_bad_alpha(self) -> None:
        with pytest.raises(ConfigError, match=r"alpha=1\.5"):
            combo_loss(REG_LOGITS, REG_TARGET, alpha=1.5)


class TestBuildLoss:
    @pytest.mark.parametrize(
        ("spec", "cls"),
        [
            ("bce", BCEWithLogitsLoss),
            ("ce", CrossEntropyLoss),
            ("cross_entropy", CrossEntropyLoss),
            ("weighted_bce", WeightedBCELoss),
            ("focal", FocalLoss),
            ("jaccard", SoftJaccardLoss),
            ("dice", SoftDiceLoss),
            ("bce+jaccard", ComboLoss),
            ("BCE + Jaccard", ComboLoss),
        ],
    )
    def test_names(self, spec: str, cls: type) -> None:
        assert isinstance(build_loss(spec), cls)

    def test_dict_options(self) -> None:
        loss = build_loss({"name": "bce+jaccard", "alpha": 0.3})
        assert isinstance(loss, ComboLoss) and loss.alpha == 0.3
        focal = build_loss({"name": "focal", "gamma": 0.0, "alpha": [0.2, 0.3, 0.5], "ignore_index": 255})
        assert isinstance(focal, FocalLoss) and focal.gamma == 0.0 and focal.ignore_index == 255

    def test_unknown_name_lists_valid_ones(self) -> None:
        with pytest.raises(ConfigError, match="unknown loss 'lovasz'") as info:
            build_loss("lovasz")
        for name in LOSS_NAMES:
            assert repr(name) in str(info.value)

    @pytest.mark.parametrize(
        ("spec", "match"),
        [
            ({"name": "focal", "gama": 1.0}, "unknown option 'gama'"),
            ({"gamma": 1.0}, "name"),
            ({"name": "focal", "gamma": -2.0}, "gamma=-2.0"),
            ({"name": "jaccard", "mode": "logJ"}, "mode='logJ'"),
            ({"name": "ce", "class_weights": [1.0, -1.0]}, "class_weights"),
            ({"name": "dice", "ignore_index": "255"}, "ignore_index"),
            (42, "loss spec 42"),
        ],
    )
    def test_bad_specs(self, spec: object, match: str) -> None:
        with pytest.raises(ConfigError, match=match):
            build_loss(spec)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- shared behaviour


ALL_BINARY = [
    lambda x, y, **kw: bce(x, y, **kw),
    lambda x, y, **kw: weighted_bce(x, y, pos_weight=4.0, **kw),
    lambda x, y, **kw: focal_loss(x, y, alpha=0.25, **kw),
    lambda x, y, **kw: soft_jaccard(x, y, **kw),
    lambda x, y, **kw: soft_jaccard(x, y, mode="-logJ", smooth=0.0, **kw),
    lambda x, y, **kw: soft_dice(x, y, **kw),
    lambda x, y, **kw: combo_loss(x, y, **kw),
]
ALL_MULTICLASS = [
    lambda x, y, **kw: cross_entropy(x, y, class_weights=[1.0, 2.0, 3.0], **kw),
    lambda x, y, **kw: focal_loss(x, y, gamma=0.5, **kw),
    lambda x, y, **kw: soft_jaccard(x, y, per_image=True, **kw),
    lambda x, y, **kw: soft_dice(x, y, classes=[1, 2], **kw),
    lambda x, y, **kw: combo_loss(x, y, **kw),
]


@pytest.mark.parametrize("spatial", [(4, 5), (3, 4, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("index", range(len(ALL_BINARY)))
def test_binary_gradients_finite_and_options_matter(index: int, spatial: tuple[int, ...]) -> None:
    loss_fn = ALL_BINARY[index]
    gen = torch.Generator().manual_seed(index)
    logits = (torch.randn(2, 1, *spatial, generator=gen) * 30).requires_grad_()
    target = (torch.rand(2, *spatial, generator=gen) > 0.5).float()
    weight = torch.rand(2, *spatial, generator=gen) * 3
    ignored = target.clone()
    ignored[0, 0] = 255
    plain = loss_fn(logits, target)
    plain.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert not torch.isclose(plain, loss_fn(logits, target, weight=weight))
    assert not torch.isclose(plain, loss_fn(logits, ignored, ignore_index=255))


@pytest.mark.parametrize("spatial", [(4, 5), (3, 4, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("index", range(len(ALL_MULTICLASS)))
def test_multiclass_gradients_finite_and_options_matter(index: int, spatial: tuple[int, ...]) -> None:
    loss_fn = ALL_MULTICLASS[index]
    gen = torch.Generator().manual_seed(10 + index)
    logits = (torch.randn(2, 3, *spatial, generator=gen) * 30).requires_grad_()
    target = torch.randint(0, 3, (2, *spatial), generator=gen)
    weight = torch.rand(2, *spatial, generator=gen) * 3
    ignored = target.clone()
    ignored[0, 0] = -100
    plain = loss_fn(logits, target, weight=weight)
    plain.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert not torch.isclose(plain, loss_fn(logits, target))
    assert not torch.isclose(plain, loss_fn(logits, ignored, weight=weight, ignore_index=-100))


def test_half_precision_logits_are_upcast() -> None:
    logits = BIN_LOGITS.to(torch.bfloat16)
    loss = bce(logits, BIN_TARGET)
    assert loss.dtype == torch.float32
    assert math.isclose(float(loss), sum(BIN_PIXELS) / 4, rel_tol=1e-2)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: bce(MC_LOGITS, MC_TARGET), InputError, "expected 1 channel"),
        (lambda: cross_entropy(BIN_LOGITS, BIN_TARGET), InputError, "expected C >= 2"),
        (lambda: bce(BIN_LOGITS, BIN_TARGET[:, :1]), InputError, "target has shape"),
        (lambda: bce(BIN_LOGITS, BIN_TARGET * 2), InputError, "contains 2"),
        (lambda: cross_entropy(MC_LOGITS, MC_TARGET.double()), InputError, "integer class indices"),
        (lambda: cross_entropy(MC_LOGITS, torch.tensor([[[2, 3]]])), InputError, "contains class 3"),
        (lambda: cross_entropy(MC_LOGITS, torch.tensor([[[2, 3]]]), ignore_index=4), InputError, "class 3"),
        (lambda: cross_entropy(MC_LOGITS, MC_TARGET, class_weights=[1.0, 2.0]), ConfigError, "3 classes"),
        (lambda: cross_entropy(MC_LOGITS, MC_TARGET, class_weights="a"), ConfigError, "class_weights"),  # type: ignore[arg-type]
        (lambda: bce(BIN_LOGITS, BIN_TARGET, weight=torch.ones(1, 3, 3)), InputError, "weight map"),
        (lambda: bce(BIN_LOGITS, BIN_TARGET, weight=-torch.ones(1, 2, 2)), InputError, "negative"),
        (lambda: bce(BIN_LOGITS[0, 0], BIN_TARGET), InputError, "logits has shape"),
        (lambda: bce(BIN_LOGITS.long(), BIN_TARGET), InputError, "floating"),
        (lambda: bce(BIN_LOGITS, BIN_TARGET, ignore_index=1.5), ConfigError, "ignore_index"),  # type: ignore[arg-type]
        (lambda: focal_loss(BIN_LOGITS, BIN_TARGET, gamma=-1.0), ConfigError, "gamma=-1.0"),
        (lambda: focal_loss(BIN_LOGITS, BIN_TARGET, alpha=1.5), ConfigError, "alpha=1.5"),
        (lambda: FocalLoss(gamma=math.nan), ConfigError, "gamma=nan"),
        (lambda: soft_dice(BIN_LOGITS, BIN_TARGET, classes=[0]), ConfigError, "classes"),
    ],
)
def test_bad_arguments(call: Callable[[], object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------- U-Net weight map


def _two_touching_squares() -> np.ndarray:
    labels = np.zeros((20, 40), dtype=np.int32)
    labels[5:15, 5:15] = 1
    labels[5:15, 16:26] = 2  # column 15 is a 1-pixel gap
    return labels


def _reference_weight_map(
    labels: np.ndarray, w0: float, sigma: float, class_weights: tuple[float, float] | None = None
) -> np.ndarray:
    """Direct transcription of the formula: full-image EDT per instance, no truncation."""
    ids = [i for i in np.unique(labels) if i != 0]
    fg = labels > 0
    if class_weights is None:
        n_fg, n = int(fg.sum()), labels.size
        present = int(n_fg > 0) + int(n_fg < n)
        class_weights = (n / (present * max(n - n_fg, 1)), n / (present * max(n_fg, 1)))
    wc = np.where(fg, class_weights[1], class_weights[0])
    if len(ids) < 2:
        return wc
    dists = np.sort(np.stack([ndimage.distance_transform_edt(labels != i) for i in ids]), axis=0)
    border = w0 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * sigma**2))
    return wc + np.where(fg, 0.0, border)


class TestUNetWeightMap:
    def test_gap_and_far_pixels(self) -> None:
        labels = _two_touching_squares()
        weights = unet_weight_map(labels, w0=10.0, sigma=5.0)
        # 200 foreground / 600 background pixels: balanced w_c = 800 / (2 * n_class)
        wc_fg, wc_bg = 800 / (2 * 200), 800 / (2 * 600)
        gap = weights[10, 15]  # d1 = d2 = 1
        assert math.isclose(gap, wc_bg + 10.0 * math.exp(-((1 + 1) ** 2) / (2 * 5.0**2)), rel_tol=1e-6)
        assert gap > wc_bg + 0.9 * 10.0
        assert math.isclose(weights[19, 39], wc_bg, rel_tol=1e-6)  # d1 + d2 ≈ 40 px away
        assert np.allclose(weights[labels > 0], wc_fg)  # objects get w_c only
        assert weights.dtype == np.float32 and weights.shape == labels.shape
        assert math.isclose(float(weights[labels == 0].min()), wc_bg, rel_tol=1e-6)

    def test_balanced_class_weights_average_to_one(self) -> None:
        weights = unet_weight_map(_two_touching_squares(), w0=0.0)
        assert math.isclose(float(weights.mean()), 1.0, rel_tol=1e-6)

    def test_explicit_class_weights(self) -> None:
        weights = unet_weight_map(_two_touching_squares(), w0=5.0, sigma=2.0, class_weights=(1.0, 1.0))
        assert math.isclose(weights[10, 15], 1.0 + 5.0 * math.exp(-4 / 8), rel_tol=1e-6)
        assert weights[10, 10] == 1.0

    def test_3d_gap(self) -> None:
        labels = np.zeros((9, 9, 12), dtype=np.int64)
        labels[2:7, 2:7, 1:5] = 4
        labels[2:7, 2:7, 6:11] = 9  # plane z=5 is a 1-voxel gap; ids need not be consecutive
        weights = unet_weight_map(labels, w0=10.0, sigma=5.0, class_weights=(1.0, 1.0))
        assert math.isclose(weights[4, 4, 5], 1.0 + 10.0 * math.exp(-4 / 50), rel_tol=1e-6)
        assert np.allclose(weights, _reference_weight_map(labels, 10.0, 5.0, (1.0, 1.0)), atol=1e-5)

    @pytest.mark.parametrize("shape", [(48, 64), (12, 20, 24)])
    def test_matches_direct_formula_on_random_instances(self, shape: tuple[int, ...]) -> None:
        rng = np.random.default_rng(sum(shape))
        labels, _ = ndimage.label(ndimage.binary_opening(rng.random(shape) > 0.6))
        expected = _reference_weight_map(labels, 10.0, 3.0)
        assert np.allclose(unet_weight_map(labels, w0=10.0, sigma=3.0), expected, rtol=1e-5, atol=1e-5)

    def test_single_object_has_no_border_term(self) -> None:
        labels = np.zeros((10, 10), dtype=np.int32)
        labels[3:6, 3:6] = 7
        weights = unet_weight_map(labels, class_weights=(1.0, 2.0))
        assert set(np.unique(weights).tolist()) == {1.0, 2.0}

    def test_feeds_the_losses(self) -> None:
        labels = _two_touching_squares()
        weight = torch.from_numpy(unet_weight_map(labels)).unsqueeze(0)
        logits = torch.zeros(1, 1, *labels.shape)
        target = torch.from_numpy(labels > 0).float().unsqueeze(0)
        assert close(bce(logits, target, weight=weight), math.log(2.0) * float(weight.mean()), tol=1e-6)

    @pytest.mark.parametrize(
        ("kwargs", "error", "match"),
        [
            ({"instance_labels": np.zeros((4, 4), np.float32)}, InputError, "dtype float32"),
            ({"instance_labels": np.zeros(4, np.int32)}, InputError, "shape"),
            ({"instance_labels": -np.ones((4, 4), np.int32)}, InputError, "contains -1"),
            ({"instance_labels": np.zeros((4, 4), np.int32), "sigma": 0.0}, ConfigError, "sigma"),
            ({"instance_labels": np.zeros((4, 4), np.int32), "w0": -1.0}, ConfigError, "w0"),
            (
                {"instance_labels": np.zeros((4, 4), np.int32), "class_weights": (1.0,)},
                ConfigError,
                "class_weights",
            ),
        ],
    )
    def test_bad_inputs(self, kwargs: dict, error: type[Exception], match: str) -> None:
        with pytest.raises(error, match=match):
            unet_weight_map(**kwargs)
