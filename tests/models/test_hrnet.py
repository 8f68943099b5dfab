"""Tests of HRNetV2 (``segflow.models.arch.hrnet``): structure against the official configurations,
resolution mixing, shapes, export, determinism, training. Registry-wide checks (trace, norms, odd
sizes, gradients) run in ``test_arch.py``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segflow.errors import ConfigError
from segflow.models.arch import build_architecture
from segflow.models.arch.hrnet import HRModule, HRNet
from segflow.models.arch.layers import BasicBlock
from tests.helpers import train_one_epoch


def hrnet(**kwargs: Any) -> HRNet:
    torch.manual_seed(0)
    model = build_architecture("hrnet", spatial_dims=2, in_channels=3, out_channels=2, **kwargs)
    assert isinstance(model, HRNet)
    return model


def parameter_count(width: int, depth: str, classes: int = 19) -> int:
    with torch.device("meta"):
        model = build_architecture("hrnet", spatial_dims=2, in_channels=3, out_channels=classes, width=width,
                                   depth=depth)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("width", "depth", "exact", "published"),
    [
        # github.com/HRNet/HRNet-Semantic-Segmentation README (master), Cityscapes (19 classes):
        # HRNetV2-W18-Small-v1 1.5M, HRNetV2-W18-Small-v2 3.9M, HRNetV2-W48 65.8M (the TPAMI paper
        # prints 65.9M: 65.86M rounds to one and truncates to the other). The exact counts equal
        # those of the official seg_hrnet.py built from the same experiments/cityscapes/*.yaml.
        (16, "small-v1", 1_540_819, 1.5e6),
        (18, "small-v2", 3_939_579, 3.9e6),
        (48, "full", 65_859_379, 65.8e6),
    ],
)
def test_parameter_counts_match_the_official_models(width: int, depth: str, exact: int, published: float) -> None:
    count = parameter_count(width, depth)
    assert published <= count < published + 0.1e6
    assert count == exact


def test_width_scales_every_branch_and_the_head() -> None:
    model: Any = hrnet(width=6, depth="small-v2")  # Any: the test reads submodules by index
    stage4 = model.stages[2]
    assert len(model.stages[1]) == 3 and len(stage4) == 2  # small-v2: 1 / 3 / 2 modules
    module = stage4[0]
    assert isinstance(module, HRModule)
    branch: Any
    for k, branch in enumerate(module.branches):
        assert len(branch) == 2 and all(isinstance(b, BasicBlock) for b in branch)
        assert branch[0].conv1.in_channels == 6 * 2**k
    assert model.head[0].in_channels == 15 * 6  # W + 2W + 4W + 8W concatenated
    assert len(model.stage1) == 2 and model.stage1[0].body[-2].out_channels == 256


def test_branch_resolutions_are_quarter_to_thirty_second() -> None:
    model = hrnet(width=4).eval()
    with torch.no_grad():
        features = model.features(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [(4, 16, 24), (8, 8, 12), (16, 4, 6), (32, 2, 3)]


@pytest.mark.parametrize("size", [(67, 93), (1, 1), (31, 33), (128, 64)])
def test_default_model_output_shape_at_odd_sizes(size: tuple[int, int]) -> None:
    model = build_architecture("hrnet", spatial_dims=2, in_channels=4, out_channels=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 4, *size))
    assert out.shape == (2, 5, *size)
    assert torch.isfinite(out).all()


def far_gradient(model: HRNet, size: int = 256) -> float:
    """Largest |d logit(0, 0) / d input| over the input quadrant farthest from pixel (0, 0)."""
    x = torch.randn(1, 3, size, size, requires_grad=True)
    model(x)[0, 0, 0, 0].backward()
    assert x.grad is not None
    return float(x.grad[..., size // 2 :, size // 2 :].abs().max())


def test_fusion_carries_distant_context_into_the_high_resolution_branch() -> None:
    """Pixel (0, 0) sees the far quadrant of a 256x256 input only through the lower-resolution
    branches: with the head reading branch 0 alone it still does (fusion feeds branch 0); with the
    upward fusion paths cut too, the gradient there is exactly zero (branch 0's own receptive field
    is about 130 px)."""
    model: Any = hrnet(width=4).eval()
    assert far_gradient(model) > 0
    with torch.no_grad():
        model.head[0].weight[:, 4:] = 0  # the head ignores the upsampled branches 1-3
    assert far_gradient(model) > 0
    with torch.no_grad():
        for stage in model.stages:
            for module in stage:
                for i, paths in enumerate(module.fuse):
                    for path in list(paths)[i + 1 :]:  # lower resolution -> branch i
                        path[0].weight.zero_()
    assert far_gradient(model) == 0


def test_eval_is_deterministic_and_independent_of_the_batch() -> None:
    model = hrnet(width=4).eval()
    x = torch.randn(3, 3, 45, 70)
    with torch.no_grad():
        first = model(x)
        second = model(x)
        alone = model(x[1:2])
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(alone, first[1:2], rtol=1e-5, atol=1e-5)


def test_onnx_export_matches_torch_at_another_size(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = hrnet(width=4).eval()
    path = tmp_path / "hrnet.onnx"
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
    model = hrnet(width=4).train()
    torch.manual_seed(1)
    field = F.interpolate(torch.randn(2, 1, 8, 8), size=(64, 64), mode="bilinear", align_corners=False)
    x = field.expand(2, 3, 64, 64) + 0.1 * torch.randn(2, 3, 64, 64)
    target = (field[:, 0] > 0).long()  # smooth regions: learnable at the 1/4-resolution logits
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        ({"width": 0}, ["hrnet: width=0", ">= 1"]),
        ({"width": 2.5}, ["width=2.5"]),
        ({"depth": "w48"}, ["depth='w48'", "'small-v1'", "'small-v2'", "'full'"]),
        ({"stem_channels": 8}, ["'stem_channels'", "width, depth"]),
    ],
)
def test_bad_options_raise_one_line_config_errors(options: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        build_architecture("hrnet", spatial_dims=2, in_channels=3, out_channels=2, **options)
    assert "\n" not in str(caught.value)
    for fragment in fragments:
        assert fragment in str(caught.value)
    with pytest.raises(ConfigError, match="does not support spatial_dims=3"):
        build_architecture("hrnet", spatial_dims=3, in_channels=3, out_channels=2)


@pytest.mark.filterwarnings("ignore:validation:segflow.errors.SegflowWarning")  # a tiny validation set, on purpose
def test_segflow_train_runs_an_epoch_and_writes_a_loadable_package(tmp_path: Path) -> None:
    module = train_one_epoch(tmp_path, {"name": "hrnet", "args": {"width": 4}})
    with torch.no_grad():
        assert module(torch.randn(1, 4, 48, 48)).shape == (1, 4, 48, 48)
