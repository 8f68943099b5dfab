"""Tests of RefineNet (``segflow.models.arch.refinenet``): its blocks against closed forms, the
cascade, shapes, export, determinism, training. Registry-wide checks (trace, norms, odd sizes,
gradients) run in ``test_arch.py``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segflow.errors import ConfigError
from segflow.models.arch import build_architecture
from segflow.models.arch.refinenet import ChainedResidualPooling, RefineBlock, RefineNet, ResidualConvUnit
from tests.helpers import train_one_epoch

SMALL: dict[str, Any] = {"channels": (4, 8, 8, 16), "stem_channels": 4, "refine_channels": (4, 4, 4, 8)}


def refinenet(**kwargs: Any) -> RefineNet:
    torch.manual_seed(0)
    model = build_architecture("refinenet", spatial_dims=2, in_channels=3, out_channels=2, **{**SMALL, **kwargs})
    assert isinstance(model, RefineNet)
    return model


def conv_params(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of a conv with bias (every conv of the refinement path has one)."""
    assert isinstance(module, nn.Conv2d) and module.bias is not None
    return module.weight, module.bias


def set_identity(module: nn.Module) -> None:
    """Make a same-channel 3x3 conv the identity map (Dirac kernel, zero bias)."""
    weight, bias = conv_params(module)
    with torch.no_grad():
        nn.init.dirac_(weight)
        bias.zero_()


def set_zero(module: nn.Module) -> None:
    weight, bias = conv_params(module)
    with torch.no_grad():
        weight.zero_()
        bias.zero_()


def test_residual_conv_unit_is_relu_conv_relu_conv_plus_identity() -> None:
    torch.manual_seed(0)
    rcu = ResidualConvUnit(3)
    x = torch.randn(2, 3, 9, 11)
    expected = x + rcu.conv2(F.relu(rcu.conv1(F.relu(x))))
    torch.testing.assert_close(rcu(x), expected)
    set_zero(rcu.conv2)
    torch.testing.assert_close(rcu(x), x, rtol=0, atol=0)  # zero residual: the identity
    assert not any(isinstance(m, nn.BatchNorm2d) for m in rcu.modules())  # the paper removes BN


@pytest.mark.parametrize("blocks", [0, 1, 2, 3])
def test_chained_residual_pooling_with_identity_convs_sums_growing_max_windows(blocks: int) -> None:
    """With identity convs the chain is relu(x) + max5(relu x) + max9(relu x) + ...: block k pools
    the previous block's output, so its window is (4k + 1) pixels, max-pool padding ignored."""
    crp = ChainedResidualPooling(2, blocks)
    for conv in crp.convs:
        set_identity(conv)
    x = torch.randn(1, 2, 17, 13)
    r = F.relu(x)
    expected = r.clone()
    for k in range(1, blocks + 1):
        window = 4 * k + 1
        expected = expected + F.max_pool2d(r, window, stride=1, padding=window // 2)
    torch.testing.assert_close(crp(x), expected)


def test_fusion_sums_the_fine_path_and_the_upsampled_coarse_path() -> None:
    """With zero RCU residuals, identity fusion convs and no pooling convs, a block computes
    out = relu(fine + bilinear(coarse)) (the CRP's ReLU; the output RCU adds zero)."""
    block = RefineBlock([3, 3], 3, pool_blocks=0)
    units: list[Any] = [*block.adapt[0], *block.adapt[1], block.out]  # type: ignore[misc]
    for unit in units:
        set_zero(unit.conv2)
    assert block.fuse is not None
    for conv in block.fuse:
        set_identity(conv)
    fine, coarse = torch.randn(1, 3, 16, 12), torch.randn(1, 3, 8, 6)
    expected = F.relu(fine + F.interpolate(coarse, size=(16, 12), mode="bilinear", align_corners=False))
    torch.testing.assert_close(block([fine, coarse]), expected)


def test_cascade_runs_from_one_thirty_second_to_one_quarter() -> None:
    model = refinenet().eval()
    shapes: list[tuple[int, ...]] = []
    hooks = [block.register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape[1:])))
             for block in model.refine]
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 96))
    for hook in hooks:
        hook.remove()
    # hooks fire in execution order: RefineNet-4 (1/32) first, RefineNet-1 (1/4) last
    assert shapes == [(8, 2, 3), (4, 4, 6), (4, 8, 12), (4, 16, 24)]
    assert model.refine[3].fuse is None and all(b.fuse is not None for b in list(model.refine)[:3])


def test_deepest_features_reach_the_output() -> None:
    """Through the cascade, the 1/32 encoder path changes the full-resolution logits."""
    model = refinenet().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        set_zero(model.reduce[3])
        after = model(x)
    assert (before - after).abs().max() > 1e-4


@pytest.mark.parametrize("size", [(67, 93), (1, 1), (31, 33)])
def test_default_model_output_shape_at_odd_sizes(size: tuple[int, int]) -> None:
    model = build_architecture("refinenet", spatial_dims=2, in_channels=4, out_channels=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 4, *size))
    assert out.shape == (2, 5, *size)
    assert torch.isfinite(out).all()


def test_eval_is_deterministic_and_independent_of_the_batch() -> None:
    model = refinenet().eval()
    x = torch.randn(3, 3, 45, 70)
    with torch.no_grad():
        first = model(x)
        second = model(x)
        alone = model(x[1:2])
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(alone, first[1:2], rtol=1e-5, atol=1e-5)


def test_onnx_export_matches_torch_at_another_size(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = refinenet().eval()
    path = tmp_path / "refinenet.onnx"
    axes = {0: "n", 2: "y", 3: "x"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 37, 53),), path, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": axes, "logits": axes}, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 67, 93)
    (got,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert got.shape == (2, 2, 67, 93)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_a_few_steps_fit_a_fixed_batch() -> None:
    model = refinenet(dropout=0.0).train()
    torch.manual_seed(1)
    field = F.interpolate(torch.randn(2, 1, 8, 8), size=(64, 64), mode="bilinear", align_corners=False)
    x = field.expand(2, 3, 64, 64) + 0.1 * torch.randn(2, 3, 64, 64)
    target = (field[:, 0] > 0).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        ({"refine_channels": (4, 4, 4)}, ["refine_channels=(4, 4, 4)", "exactly 4"]),
        ({"pool_blocks": -1}, ["pool_blocks=-1", ">= 0"]),
        ({"channels": (4, 8, 0, 16)}, ["channels=(4, 8, 0, 16)"]),
        ({"dropout": 1.0}, ["dropout=1.0", "[0, 1)"]),
        ({"rcus": 3}, ["'rcus'", "refine_channels", "pool_blocks"]),
    ],
)
def test_bad_options_raise_one_line_config_errors(options: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        build_architecture("refinenet", spatial_dims=2, in_channels=3, out_channels=2, **options)
    assert "\n" not in str(caught.value)
    for fragment in fragments:
        assert fragment in str(caught.value)


@pytest.mark.filterwarnings("ignore:validation:segflow.errors.SegflowWarning")  # a tiny validation set, on purpose
def test_segflow_train_runs_an_epoch_and_writes_a_loadable_package(tmp_path: Path) -> None:
    module = train_one_epoch(tmp_path, {"name": "refinenet", "args": {k: list(v) if isinstance(v, tuple) else v
                                                       for k, v in SMALL.items()}})
    with torch.no_grad():
        assert module(torch.randn(1, 4, 48, 48)).shape == (1, 4, 48, 48)
