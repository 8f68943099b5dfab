"""Tests of segflow.training.losses.pixel: CE, BCE, weighted BCE and focal loss by hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segflow.errors import ConfigError
from segflow.training.losses import (
    CrossEntropyLoss,
    FocalLoss,
    WeightedBCELoss,
    bce,
    cross_entropy,
    focal_loss,
    weighted_bce,
)
from tests.training.loss_examples import (
    BIN_LOGITS,
    BIN_PIXELS,
    BIN_TARGET,
    LN3,
    MC_LOGITS,
    MC_PIXELS,
    MC_TARGET,
    close,
    sigmoid,
    t,
)

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
