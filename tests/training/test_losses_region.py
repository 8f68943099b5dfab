"""Tests of segflow.training.losses.region: soft Jaccard, soft Dice and their combinations by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segflow.errors import ConfigError
from segflow.training.losses import (
    BCEWithLogitsLoss,
    CombinedLoss,
    ComboLoss,
    SoftDiceLoss,
    SoftJaccardLoss,
    bce,
    combo_loss,
    cross_entropy,
    soft_dice,
    soft_jaccard,
)
from tests.training.loss_examples import (
    LN3,
    MREG_J0,
    MREG_J1,
    MREG_LOGITS,
    MREG_TARGET,
    REG_I,
    REG_LOGITS,
    REG_P,
    REG_TARGET,
    REG_Y,
    close,
    sigmoid,
    t,
)

# --------------------------------------------------------------------------- Jaccard / Dice


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
