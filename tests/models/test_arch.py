"""Tests of the architecture registry ``segflow.models.arch`` (small widths keep them fast on CPU)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from segflow.errors import ConfigError, ModelError
from segflow.models.arch import architecture_info, architecture_names, build_architecture
from segflow.models.arch.pspnet import AdaptiveAvgPool
from segflow.models.arch.segnet import MaxUnpool, unpool_scatter

# Narrow variants of every architecture, so each forward pass takes milliseconds.
SMALL: dict[str, dict[str, Any]] = {
    "unet": {"channels": (4, 8, 16)},
    "deeplabv3plus": {
        "channels": (4, 8, 8, 16),
        "blocks": (1, 1, 1, 1),
        "stem_channels": 4,
        "aspp_channels": 8,
        "low_level_channels": 4,
        "decoder_channels": 8,
    },
    "fcn8s": {"channels": (4, 4, 8, 8, 8), "convs_per_stage": (1, 1, 1, 1, 1), "fc_channels": 8},
    "segnet": {"channels": (4, 8, 8), "convs_per_stage": 1},
    "linknet": {"channels": (4, 8, 8, 16), "stem_channels": 4},
    "pspnet": {"channels": (4, 8, 8, 16), "stem_channels": 4, "pool_channels": 4, "head_channels": 8},
    "fpn": {"channels": (4, 8, 8, 16), "stem_channels": 4, "pyramid_channels": 8, "segmentation_channels": 4},
    "hrnet": {"width": 4},
    "refinenet": {"channels": (4, 8, 8, 16), "stem_channels": 4, "refine_channels": (4, 4, 4, 8)},
}
PAIRS = [(name, dims) for name in architecture_names() for dims in architecture_info(name).spatial_dims]
SIZES: dict[int, list[tuple[int, ...]]] = {
    2: [(37, 53), (1, 1), (5, 3), (64, 64), (33, 17)],
    3: [(19, 23, 29), (1, 2, 3), (8, 8, 8)],
}
OTHER_SIZE: dict[int, tuple[int, ...]] = {2: (50, 29), 3: (10, 17, 9)}
IN_CH, OUT_CH = 3, 2


def small(name: str, dims: int, **kwargs: Any) -> Any:
    torch.manual_seed(0)
    return build_architecture(
        name, spatial_dims=dims, in_channels=IN_CH, out_channels=OUT_CH, **{**SMALL[name], **kwargs}
    )


def pair_id(pair: tuple[str, int]) -> str:
    return f"{pair[0]}-{pair[1]}d"


def test_registry_covers_every_architecture() -> None:
    assert set(architecture_names()) == set(SMALL)
    assert architecture_names() == sorted(architecture_names())
    three_d = {n for n in architecture_names() if 3 in architecture_info(n).spatial_dims}
    assert three_d == {"unet", "deeplabv3plus"}
    info = architecture_info("unet")
    info.defaults["channels"] = (1,)
    assert architecture_info("unet").defaults["channels"] == (16, 32, 64, 128)


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_output_shape_at_odd_sizes(pair: tuple[str, int]) -> None:
    name, dims = pair
    model = small(name, dims).eval()
    for size in SIZES[dims]:
        with torch.no_grad():
            out = model(torch.randn(1, IN_CH, *size))
        assert out.shape == (1, OUT_CH, *size)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_defaults_build_and_run(pair: tuple[str, int]) -> None:
    name, dims = pair
    model = build_architecture(name, spatial_dims=dims, in_channels=4, out_channels=4).eval()
    assert sum(p.numel() for p in model.parameters()) < (2_000_000 if dims == 2 else 2_500_000)
    size = (37, 53) if dims == 2 else (19, 23, 29)
    with torch.no_grad():
        assert model(torch.randn(1, 4, *size)).shape == (1, 4, *size)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(architecture_names()),
    height=st.integers(1, 70),
    width=st.integers(1, 70),
    reflect=st.booleans(),
)
def test_any_2d_size_gives_same_size_logits(name: str, height: int, width: int, reflect: bool) -> None:
    model = small(name, 2, pad_mode="reflect" if reflect else "replicate").eval()
    with torch.no_grad():
        out = model(torch.randn(1, IN_CH, height, width))
    assert out.shape == (1, OUT_CH, height, width)


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_train_batch2_gradients_reach_every_parameter(pair: tuple[str, int]) -> None:
    name, dims = pair
    model = small(name, dims).train()
    size = SIZES[dims][0]
    out = model(torch.randn(2, IN_CH, *size))
    assert out.shape == (2, OUT_CH, *size)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_deterministic_given_seed(pair: tuple[str, int]) -> None:
    name, dims = pair
    x = torch.randn(2, IN_CH, *SIZES[dims][0])
    outs = []
    for _ in range(2):
        model = small(name, dims).train()  # small() seeds before building
        torch.manual_seed(1)  # dropout masks
        outs.append(model(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["deeplabv3plus", "pspnet"])
def test_pooling_branches_work_with_batch1_in_train_mode(name: str) -> None:
    model = small(name, 2).train()
    assert model(torch.randn(1, IN_CH, 37, 53)).shape == (1, OUT_CH, 37, 53)


@pytest.mark.parametrize("norm", ["group", "none"])
@pytest.mark.parametrize("name", architecture_names())
def test_norm_variants_train_batch1_and_eval(norm: str, name: str) -> None:
    model = small(name, 2, norm=norm)
    for mode in (True, False):
        model.train(mode)
        with torch.set_grad_enabled(mode):
            assert model(torch.randn(1, IN_CH, 21, 19)).shape == (1, OUT_CH, 21, 19)


def trace(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, example)
    tracer_warnings = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    assert not tracer_warnings, [str(w.message) for w in tracer_warnings]
    return traced


TRACE_CASES: list[tuple[tuple[str, int], dict[str, Any]]] = [(p, {}) for p in PAIRS]
TRACE_CASES.append((("fcn8s", 2), {"upsampling": "learned"}))


@pytest.mark.parametrize(
    ("pair", "kwargs"),
    TRACE_CASES,
    ids=lambda v: pair_id(v) if isinstance(v, tuple) else "-".join(map(str, v.values())),
)
def test_trace_at_one_size_runs_correctly_at_another(pair: tuple[str, int], kwargs: dict[str, Any]) -> None:
    name, dims = pair
    model = small(name, dims, **kwargs).eval()
    traced = trace(model, torch.randn(1, IN_CH, *SIZES[dims][0]))
    x = torch.randn(2, IN_CH, *OTHER_SIZE[dims])
    with torch.no_grad():
        expected = model(x)
        got = traced(x)
    assert got.shape == (2, OUT_CH, *OTHER_SIZE[dims])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["unet", "deeplabv3plus", "pspnet", "segnet"])
def test_onnx_round_trip_with_dynamic_axes(name: str, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = small(name, 2).eval()
    path = tmp_path / f"{name}.onnx"
    axes = {0: "n", 2: "y", 3: "x"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The dynamo exporter needs onnxscript; the TorchScript exporter handles these models.
        torch.onnx.export(
            model,
            (torch.randn(1, IN_CH, 37, 53),),
            path,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": axes, "logits": axes},
            opset_version=17,
            dynamo=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, IN_CH, 50, 29)
    (got,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert got.shape == expected.shape == (2, OUT_CH, 50, 29)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_segnet_decoder_unpools_at_the_pooling_indices() -> None:
    model = small("segnet", 2).eval()
    assert model.pool.return_indices
    assert isinstance(model.unpool, nn.MaxUnpool2d)
    x = torch.randn(1, IN_CH, 32, 32)
    with torch.no_grad():
        reference = model(x)

        def argmin_indices(module: nn.Module, args: tuple[torch.Tensor], output: Any) -> Any:
            return output[0], F.max_pool2d(-args[0], 2, return_indices=True)[1]

        handle = model.pool.register_forward_hook(argmin_indices)
        try:
            changed = model(x)
        finally:
            handle.remove()
        assert not torch.allclose(reference, changed)
        torch.testing.assert_close(model(x), reference)


def test_unpool_scatter_equals_max_unpool() -> None:
    x = torch.randn(2, 3, 12, 10)
    values, indices = F.max_pool2d(x, 2, return_indices=True)
    expected = F.max_unpool2d(values, indices, (2, 2))
    torch.testing.assert_close(unpool_scatter(values, indices), expected, rtol=0, atol=0)
    torch.testing.assert_close(MaxUnpool()(values, indices), expected, rtol=0, atol=0)


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (13, 6), (24, 24)])
@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_pspnet_pooling_equals_adaptive_avg_pool(size: tuple[int, int], bins: int) -> None:
    x = torch.randn(2, 3, *size)
    torch.testing.assert_close(AdaptiveAvgPool(bins)(x), F.adaptive_avg_pool2d(x, bins))


@pytest.mark.parametrize("dims", [2, 3])
def test_deeplab_output_stride_sets_encoder_resolution(dims: int) -> None:
    size = (64, 64) if dims == 2 else (32, 32, 32)
    x = torch.randn(1, IN_CH, *size)
    for stride, rate in ((16, 6), (8, 12)):
        model = small("deeplabv3plus", dims, output_stride=stride).eval()
        assert model.total_stride == stride
        with torch.no_grad():
            features = model.encoder(x)
            out = model(x)
        assert features[0].shape[2:] == tuple(s // 4 for s in size)
        assert features[-1].shape[2:] == tuple(s // stride for s in size)
        assert model.aspp.branches[1][0].dilation == (rate,) * dims
        assert out.shape == (1, OUT_CH, *size)


def test_fcn8s_learned_upsampling_starts_bilinear() -> None:
    model = small("fcn8s", 2, upsampling="learned").eval()
    up = model.up8
    assert isinstance(up, nn.ConvTranspose2d)
    plane = torch.ones(1, OUT_CH, 4, 4)
    with torch.no_grad():
        out = up(plane)
    assert out.shape == (1, OUT_CH, 32, 32)
    torch.testing.assert_close(out[..., 8:-8, 8:-8], torch.ones_like(out[..., 8:-8, 8:-8]))


def test_linknet_adds_decoder_output_to_skip() -> None:
    model = small("linknet", 2).eval()
    x = torch.randn(1, IN_CH, 64, 64)
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.decoders[0].register_forward_hook(lambda m, a, out: seen.update(out=out)),
        model.decoders[1].register_forward_pre_hook(lambda m, a: seen.update(inp=a[0])),
    ]
    with torch.no_grad():
        features = model.encoder(x)
        model(x)
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(seen["inp"], seen["out"] + features[2])


@pytest.mark.parametrize(
    ("call", "fragments"),
    [
        ({"name": "fcn"}, ["'fcn'", "unet", "deeplabv3plus"]),
        (
            {"name": "fcn8s", "spatial_dims": 3},
            ["'fcn8s'", "spatial_dims=3", "supports 2", "deeplabv3plus, unet for 3D"],
        ),
        ({"name": "unet", "spatial_dims": 4}, ["spatial_dims=4", "2", "3"]),
        ({"name": "unet", "spatial_dims": True}, ["spatial_dims=True"]),
        ({"name": "unet", "in_channels": 0}, ["in_channels=0"]),
        ({"name": "unet", "out_channels": 2.5}, ["out_channels=2.5"]),
        ({"name": "unet", "chanels": (8, 16)}, ["'chanels'", "channels", "dropout"]),
        ({"name": "unet", "channels": (8,)}, ["channels=(8,)", "at least 2"]),
        ({"name": "unet", "channels": (8, 0)}, ["channels=(8, 0)"]),
        ({"name": "unet", "dropout": 1.5}, ["dropout=1.5", "[0, 1)"]),
        ({"name": "unet", "norm": "layer"}, ["norm='layer'", "'batch'", "'group'"]),
        ({"name": "unet", "pad_mode": "zeros"}, ["pad_mode='zeros'", "'replicate'", "'reflect'"]),
        ({"name": "deeplabv3plus", "output_stride": 32}, ["output_stride=32", "16", "8"]),
        ({"name": "deeplabv3plus", "channels": (8, 16, 32)}, ["channels=(8, 16, 32)", "exactly 4"]),
        ({"name": "pspnet", "bins": []}, ["bins=[]"]),
        ({"name": "fcn8s", "upsampling": "nearest"}, ["upsampling='nearest'", "'learned'"]),
    ],
)
def test_bad_configuration_raises_one_line_config_error(call: dict[str, Any], fragments: list[str]) -> None:
    args = {"spatial_dims": 2, "in_channels": 3, "out_channels": 2, **call}
    name = args.pop("name")
    with pytest.raises(ConfigError) as caught:
        build_architecture(name, **args)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    assert isinstance(caught.value, ValueError)


def test_unknown_architecture_info_raises() -> None:
    with pytest.raises(ConfigError, match="unknown architecture 'nope'"):
        architecture_info("nope")


def test_names_are_case_insensitive_and_lists_are_accepted() -> None:
    model = build_architecture(" UNet ", spatial_dims=2, in_channels=1, out_channels=1, channels=[4, 8])
    assert model.total_stride == 2


def test_wrong_input_rank_or_channels_raise_model_error() -> None:
    model = small("unet", 2).eval()
    with pytest.raises(ModelError, match=r"\(N, C, Y, X\)"):
        model(torch.randn(IN_CH, 16, 16))
    with pytest.raises(ModelError, match="in_channels=5"):
        model(torch.randn(1, 5, 16, 16))
