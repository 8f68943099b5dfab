"""Tests of segflow.training.losses: build_loss, and what every loss shares (gradients, options, errors)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from segflow.errors import ConfigError, InputError
from segflow.training.losses import (
    LOSS_NAMES,
    BCEWithLogitsLoss,
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
    weighted_bce,
)
from tests.training.loss_examples import BIN_LOGITS, BIN_PIXELS, BIN_TARGET, MC_LOGITS, MC_TARGET


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
