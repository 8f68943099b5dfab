"""Torchvision-layout encoders (ResNet-18/34/50, VGG-11) in UNet, LinkNet, DeepLabV3+ and FPN.

torchvision does not load with the CPU torch here, so torchvision's state-dict layout is written out
below from its source (``torchvision/models/resnet.py``: ``ResNet.__init__``, ``_make_layer``,
``BasicBlock``, ``Bottleneck``; ``torchvision/models/vgg.py``: ``make_layers``, ``cfgs["A"]``,
``VGG.classifier``), checked against the parameter counts torchvision documents, and the trunks'
forward passes are compared with references written with ``torch.nn.functional``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn

from segflow.cli.train import train_cmd
from segflow.errors import ConfigError, ModelError
from segflow.models.arch import build_architecture
from segflow.models.arch.encoder_weights import adapt_first_conv, encoder_of, load_encoder_weights
from segflow.models.arch.encoders import ENCODER_NAMES, IMAGENET_MEAN, IMAGENET_STD, build_encoder
from segflow.models.loading import load_module
from segflow.models.package import resolve_package
from segflow.training.config import train_config_from_dict

ARCHS = ("unet", "linknet", "deeplabv3plus", "fpn")
# light decoders: the encoders are full size whatever the options
LIGHT: dict[str, dict[str, Any]] = {
    "unet": {"decoder_channels": (16, 8, 8, 8, 4)},
    "linknet": {},
    "deeplabv3plus": {"aspp_channels": 8, "low_level_channels": 4, "decoder_channels": 8},
    "fpn": {"pyramid_channels": 8, "segmentation_channels": 4},
}
COMBOS = [(arch, enc) for arch in ARCHS for enc in ENCODER_NAMES]
IN_CH, OUT_CH = 3, 2

# ----------------------------------------------------------------------------- torchvision's layout

_RESNET_LAYOUT = {"resnet18": (1, (2, 2, 2, 2)), "resnet34": (1, (3, 4, 6, 3)), "resnet50": (4, (3, 4, 6, 3))}
# torchvision's documented num_params (weights + biases, classifier included)
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "vgg11": 132_863_336}


def _bn(shapes: dict[str, tuple[int, ...]], prefix: str, channels: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{prefix}.{name}"] = (channels,)
    shapes[f"{prefix}.num_batches_tracked"] = ()


def torchvision_resnet(name: str) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of ``torchvision.models.<name>().state_dict()``, in order."""
    expansion, layers = _RESNET_LAYOUT[name]
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}
    _bn(shapes, "bn1", 64)
    inplanes = 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
        for block in range(count):
            p = f"layer{stage}.{block}"
            if expansion == 1:  # BasicBlock: conv3x3(stride), conv3x3
                shapes[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
                _bn(shapes, f"{p}.bn1", planes)
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                _bn(shapes, f"{p}.bn2", planes)
            else:  # Bottleneck: conv1x1, conv3x3(stride), conv1x1 to planes * 4
                shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
                _bn(shapes, f"{p}.bn1", planes)
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                _bn(shapes, f"{p}.bn2", planes)
                shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                _bn(shapes, f"{p}.bn3", planes * 4)
            if block == 0 and (stage > 1 or inplanes != planes * expansion):
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                _bn(shapes, f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    shapes["fc.weight"] = (1000, 512 * expansion)
    shapes["fc.bias"] = (1000,)
    return shapes


def torchvision_vgg11() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of ``torchvision.models.vgg11().state_dict()``, in order."""
    shapes: dict[str, tuple[int, ...]] = {}
    index, cin = 0, 3
    for value in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if value == "M":
            index += 1
            continue
        assert isinstance(value, int)
        shapes[f"features.{index}.weight"] = (value, cin, 3, 3)
        shapes[f"features.{index}.bias"] = (value,)
        index, cin = index + 2, value  # conv, ReLU
    for i, (cout, cin2) in zip((0, 3, 6), ((4096, 512 * 7 * 7), (4096, 4096), (1000, 4096)), strict=True):
        shapes[f"classifier.{i}.weight"] = (cout, cin2)
        shapes[f"classifier.{i}.bias"] = (cout,)
    return shapes


def torchvision_layout(name: str) -> dict[str, tuple[int, ...]]:
    return torchvision_vgg11() if name == "vgg11" else torchvision_resnet(name)


def _is_classifier(key: str) -> bool:
    return key.startswith(("fc.", "classifier."))


def random_torchvision_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with torchvision's keys and shapes and random values (positive running_var)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in torchvision_layout(name).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(1, 10_000, (), generator=g)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.1
    return state


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_reference_layout_has_torchvisions_parameter_count(name: str) -> None:
    layout = torchvision_layout(name)
    params = sum(int(np.prod(s)) for k, s in layout.items()
                 if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert params == TORCHVISION_PARAMS[name]
    assert len(layout) == {"resnet18": 122, "resnet34": 218, "resnet50": 320, "vgg11": 22}[name]


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_encoder_state_dict_is_torchvisions_without_classifier(name: str) -> None:
    expected = [(k, s) for k, s in torchvision_layout(name).items() if not _is_classifier(k)]
    got = [(k, tuple(v.shape)) for k, v in build_encoder(name, 3).state_dict().items()]
    assert got == expected
    for stride in (16, 8):  # dilation does not change a parameter
        dilated = build_encoder(name, 3, output_stride=stride).state_dict()
        assert [(k, tuple(v.shape)) for k, v in dilated.items()] == expected


@pytest.mark.parametrize(("arch", "name"), [("unet", "resnet18"), ("linknet", "resnet34"),
                                            ("deeplabv3plus", "resnet50"), ("fpn", "vgg11")])
def test_loading_a_torchvision_file_sets_every_encoder_tensor(arch: str, name: str, tmp_path: Path) -> None:
    state = random_torchvision_state(name)
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    model = build_architecture(arch, spatial_dims=2, in_channels=3, out_channels=2, encoder=name, **LIGHT[arch])
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    note = load_encoder_weights(model, path)
    assert name in note and str(path) in note
    own = model.state_dict()
    encoder_keys = [k for k in own if k.startswith("encoder.")]
    assert sorted(encoder_keys) == sorted(f"encoder.{k}" for k in state if not _is_classifier(k))
    for key in encoder_keys:
        torch.testing.assert_close(own[key], state[key[len("encoder."):]], rtol=0, atol=0)
    for key, value in before.items():  # the decoder keeps its initialisation
        torch.testing.assert_close(own[key], value, rtol=0, atol=0)


def test_safetensors_file_and_missing_batch_counters_load(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v for k, v in random_torchvision_state("resnet18", 3).items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "r18.safetensors"
    save_file(state, str(path))
    model = build_architecture("fpn", spatial_dims=2, in_channels=3, out_channels=2, encoder="resnet18")
    load_encoder_weights(model, path)
    encoder = encoder_of(model)
    torch.testing.assert_close(encoder.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"], rtol=0, atol=0)
    assert int(encoder.bn1.num_batches_tracked) == 0


# ----------------------------------------------------------------------------- forward against references


def _bn_ref(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        training=False, eps=1e-5)


def reference_resnet(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str,
                     dilate: tuple[bool, bool, bool] = (False, False, False)) -> list[torch.Tensor]:
    """torchvision's ResNet forward (v1.5, replace_stride_with_dilation) with F ops: stem + 4 stage outputs."""
    expansion, layers = _RESNET_LAYOUT[name]
    x = F.relu(_bn_ref(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    out = [x]
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    dilation = 1
    for stage, count in enumerate(layers, start=1):
        stride, previous = (1 if stage == 1 else 2), dilation
        if stage > 1 and dilate[stage - 2]:
            dilation, stride = dilation * stride, 1
        for block in range(count):
            p = f"layer{stage}.{block}"
            s, d = (stride, previous) if block == 0 else (1, dilation)
            if expansion == 1:
                y = F.conv2d(x, sd[f"{p}.conv1.weight"], stride=s, padding=d, dilation=d)
                y = F.relu(_bn_ref(y, sd, f"{p}.bn1"))
                y = _bn_ref(F.conv2d(y, sd[f"{p}.conv2.weight"], padding=d, dilation=d), sd, f"{p}.bn2")
            else:
                y = F.relu(_bn_ref(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
                y = F.conv2d(y, sd[f"{p}.conv2.weight"], stride=s, padding=d, dilation=d)
                y = F.relu(_bn_ref(y, sd, f"{p}.bn2"))
                y = _bn_ref(F.conv2d(y, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            shortcut = x
            if f"{p}.downsample.0.weight" in sd:
                shortcut = _bn_ref(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=s), sd, f"{p}.downsample.1")
            x = F.relu(y + shortcut)
        out.append(x)
    return out


def reference_vgg11(x: torch.Tensor, sd: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """VGG-11 ``features`` with F ops: the ReLU before each pool, then the last pool."""
    out = []
    for stage in ((0,), (3,), (6, 8), (11, 13), (16, 18)):
        for i in stage:
            x = F.relu(F.conv2d(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1))
        out.append(x)
        x = F.max_pool2d(x, 2, stride=2)
    return [*out, x]


@pytest.mark.parametrize("size", [(64, 64), (37, 45)])
def test_resnet18_trunk_forward_equals_functional_reference(size: tuple[int, int]) -> None:
    state = random_torchvision_state("resnet18", 1)
    trunk = build_encoder("resnet18", 3).eval()
    trunk.load_state_dict({k: v for k, v in state.items() if not _is_classifier(k)})
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = trunk(x)
        expected = reference_resnet(x, state, "resnet18")
    assert [tuple(f.shape[1:2]) for f in got] == [(c,) for c in trunk.channels]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    if size == (64, 64):
        assert [64 // f.shape[-1] for f in got] == list(trunk.reductions) == [2, 4, 8, 16, 32]


@pytest.mark.parametrize(("name", "stride"), [("resnet50", 32), ("resnet50", 8), ("resnet34", 16)])
def test_bottleneck_and_dilated_trunks_equal_reference(name: str, stride: int) -> None:
    state = random_torchvision_state(name, 2)
    trunk = build_encoder(name, 3, output_stride=stride).eval()
    trunk.load_state_dict({k: v for k, v in state.items() if not _is_classifier(k)})
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    dilate = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}[stride]
    with torch.no_grad():
        got = trunk(x)
        expected = reference_resnet(x, state, name, dilate)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    assert got[-1].shape[-1] == 64 // stride == 64 // trunk.reductions[-1]


def test_vgg11_trunk_forward_equals_functional_reference() -> None:
    state = random_torchvision_state("vgg11", 4)
    trunk = build_encoder("vgg11", 3).eval()
    trunk.load_state_dict({k: v for k, v in state.items() if not _is_classifier(k)})
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        got = trunk(x)
        expected = reference_vgg11(x, state)
    assert trunk.reductions == (1, 2, 4, 8, 16, 32)
    for g, e, r in zip(got, expected, trunk.reductions, strict=True):
        assert g.shape[-2:] == (64 // r, 96 // r)
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- other band counts


@pytest.mark.parametrize("bands", [1, 2, 3, 4, 5, 6])
def test_first_conv_adapted_as_segmentation_models_pytorch(bands: int, tmp_path: Path) -> None:
    state = random_torchvision_state("resnet34", 8)
    torch.save(state, tmp_path / "w.pth")
    model = build_architecture("linknet", spatial_dims=2, in_channels=bands, out_channels=2, encoder="resnet34")
    note = load_encoder_weights(model, tmp_path / "w.pth")
    w = state["conv1.weight"]
    if bands == 1:
        expected = w[:, 0:1] + w[:, 1:2] + w[:, 2:3]
    else:  # smp's change_conv_in_channels: new[:, i] = w[:, i % 3] * 3 / N
        expected = torch.cat([w[:, i % 3: i % 3 + 1] for i in range(bands)], dim=1) * (3 / bands)
    got = encoder_of(model).conv1.weight.detach()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    assert ("adapted from 3 to" in note) == (bands != 3)
    if bands in (1, 6):  # a uniform grey input gives the RGB response
        grey = torch.full((1, 1, 14, 14), 0.7)
        torch.testing.assert_close(F.conv2d(grey.expand(1, bands, 14, 14), got, padding=3),
                                   F.conv2d(grey.expand(1, 3, 14, 14), w, padding=3), rtol=1e-5, atol=1e-5)


def test_readme_imagenet_normalisation_for_8_bit_rgb() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    mean = ", ".join(f"{255 * m:g}" for m in IMAGENET_MEAN)
    std = ", ".join(f"{255 * s:g}" for s in IMAGENET_STD)
    assert f"mean: [{mean}], std: [{std}]" in readme


def test_adapt_first_conv_of_vgg_and_identity_for_three() -> None:
    w = torch.randn(64, 3, 3, 3)
    assert adapt_first_conv(w, 3) is w
    torch.testing.assert_close(adapt_first_conv(w, 4)[:, 3], w[:, 0] * 0.75)


# ----------------------------------------------------------------------------- refusals


def _message(exc: pytest.ExceptionInfo[Exception]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_files_that_do_not_fit_are_refused_with_one_line(tmp_path: Path) -> None:
    model = build_architecture("unet", spatial_dims=2, in_channels=3, out_channels=2, encoder="resnet18",
                               **LIGHT["unet"])
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    r34 = tmp_path / "r34.pth"
    torch.save(random_torchvision_state("resnet34"), r34)
    with pytest.raises(ModelError) as caught:  # resnet18's keys are a subset of resnet34's: must not half-load
        load_encoder_weights(model, r34)
    assert "unexpected keys layer1.2.bn1.bias" in _message(caught) and "resnet18" in _message(caught)
    state = random_torchvision_state("resnet18")
    del state["layer3.1.conv2.weight"]
    state["layer2.0.downsample.0.weight"] = torch.zeros(128, 64, 3, 3)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(ModelError) as caught:
        load_encoder_weights(model, bad)
    text = _message(caught)
    assert "missing keys layer3.1.conv2.weight" in text
    assert "layer2.0.downsample.0.weight (128, 64, 3, 3) in file vs (128, 64, 1, 1)" in text
    vgg = tmp_path / "vgg.pth"
    torch.save(random_torchvision_state("vgg11"), vgg)
    with pytest.raises(ModelError, match=r"missing keys bn1\.bias"):
        load_encoder_weights(model, vgg)
    for key, value in model.state_dict().items():  # nothing was loaded
        torch.testing.assert_close(value, initial[key], rtol=0, atol=0)
    with pytest.raises(ConfigError, match="no such file"):
        load_encoder_weights(model, tmp_path / "absent.pth")
    builtin = build_architecture("unet", spatial_dims=2, in_channels=3, out_channels=2)
    with pytest.raises(ConfigError) as caught:
        load_encoder_weights(builtin, r34)
    assert "resnet18, resnet34, resnet50, vgg11" in _message(caught)


@pytest.mark.parametrize(
    ("call", "fragments"),
    [
        ({"name": "unet", "encoder": "resnet101"}, ["encoder='resnet101'", "'builtin'", "'resnet34'", "'vgg11'"]),
        ({"name": "unet", "encoder": "resnet34", "spatial_dims": 3}, ["resnet34", "2D", "spatial_dims=3"]),
        ({"name": "deeplabv3plus", "encoder": "vgg11", "spatial_dims": 3}, ["vgg11", "spatial_dims=3"]),
        ({"name": "unet", "encoder": "resnet34", "channels": (8, 16)}, ["channels=(8, 16)", "built-in encoder"]),
        ({"name": "unet", "decoder_channels": (8, 8, 8, 8, 8)}, ["decoder_channels", "torchvision encoder"]),
        ({"name": "unet", "encoder": "vgg11", "decoder_channels": (8, 8)}, ["decoder_channels=(8, 8)", "exactly 5"]),
        ({"name": "linknet", "encoder": "resnet18", "blocks": (2, 2, 2, 2)}, ["blocks=(2, 2, 2, 2)", "remove blocks"]),
        ({"name": "fpn", "encoder": "resnet50", "stem_channels": 8}, ["stem_channels=8"]),
        ({"name": "fpn", "pyramid_channels": 0}, ["pyramid_channels=0"]),
    ],
)
def test_bad_encoder_options_raise_one_line_config_error(call: dict[str, Any], fragments: list[str]) -> None:
    args = {"spatial_dims": 2, "in_channels": 3, "out_channels": 2, **call}
    name = args.pop("name")
    with pytest.raises(ConfigError) as caught:
        build_architecture(name, **args)
    text = _message(caught)
    for fragment in fragments:
        assert fragment in text


# ----------------------------------------------------------------------------- defaults unchanged

# Recorded with the architectures as they were before encoders existed (torch.manual_seed(0),
# in_channels=4, out_channels=3): state-dict length, parameter count, sha256 of "key:shape|...", sum.
BEFORE = {
    ("unet", 2): (92, 482915, "51d7bf57e3b261d9", 1426.0497901867625),
    ("unet", 3): (92, 1402595, "fe701571a6fb2dac", 1414.969067349054),
    ("linknet", 2): (164, 332803, "cba835632cf5b4a3", 2014.2135187441172),
    ("deeplabv3plus", 2): (142, 726435, "907a90cd2563e697", 2690.703470784686),
    ("deeplabv3plus", 3): (142, 2077731, "909b22c984afd19b", 2666.638058331958),
}


@pytest.mark.parametrize("pair", list(BEFORE), ids=lambda p: f"{p[0]}-{p[1]}d")
def test_default_builds_are_the_networks_of_before(pair: tuple[str, int]) -> None:
    name, dims = pair
    torch.manual_seed(0)
    model = build_architecture(name, spatial_dims=dims, in_channels=4, out_channels=3)
    sd = model.state_dict()
    layout = hashlib.sha256("|".join(f"{k}:{tuple(v.shape)}" for k, v in sd.items()).encode()).hexdigest()[:16]
    total = sum(float(v.double().sum()) for v in sd.values())
    got = (len(sd), sum(p.numel() for p in model.parameters()), layout)
    assert got == BEFORE[pair][:3]
    assert total == pytest.approx(BEFORE[pair][3], rel=1e-12)  # the same initial values: same RNG use


def test_demo_unet_2d_loads_and_predicts_as_before() -> None:
    net = load_module(resolve_package("demo-unet-2d")).eval()
    x = torch.randn(2, 4, 45, 61, generator=torch.Generator().manual_seed(1234))
    with torch.no_grad():
        y = net(x).double()
    # recorded before encoders existed
    assert float(y.sum()) == pytest.approx(-13121.982758173282, rel=1e-6)
    assert float(y.abs().sum()) == pytest.approx(37047.53099448283, rel=1e-6)
    np.testing.assert_allclose(y[0, :, 10, 20].numpy(), [0.02317, -1.68758, 1.28606, -2.16356], atol=1e-4)
    np.testing.assert_allclose(y[1, :, 44, 60].numpy(), [-2.82739, -2.04836, -1.18818, 4.21437], atol=1e-4)
    assert torch.bincount(y.argmax(1).flatten(), minlength=4).tolist() == [1504, 240, 3689, 57]


# ----------------------------------------------------------------------------- every combination


def combo(arch: str, encoder: str, **kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    return build_architecture(arch, spatial_dims=2, in_channels=IN_CH, out_channels=OUT_CH, encoder=encoder,
                              **{**LIGHT[arch], **kwargs})


def _ids(value: Any) -> str:
    return "-".join(value) if isinstance(value, tuple) else str(value)


@pytest.mark.slow
@pytest.mark.parametrize("pair", COMBOS, ids=_ids)
def test_any_size_trace_and_onnx(pair: tuple[str, str], tmp_path: Path) -> None:
    arch, encoder = pair
    model = combo(arch, encoder).eval()
    with torch.no_grad():
        for size in ((37, 53), (1, 1), (33, 17)):
            out = model(torch.randn(1, IN_CH, *size))
            assert out.shape == (1, OUT_CH, *size) and torch.isfinite(out).all()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, torch.randn(1, IN_CH, 37, 53), check_trace=False)  # checked below
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    x = torch.randn(2, IN_CH, 50, 29)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(traced(x), expected, rtol=1e-4, atol=1e-4)
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "m.onnx"
    axes = {0: "n", 2: "y", 3: "x"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, IN_CH, 37, 53),), path, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": axes, "logits": axes}, opset_version=17,
                          dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"image": x.numpy()})
    assert got.shape == (2, OUT_CH, 50, 29)
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-3 * max(1.0, float(expected.abs().max())))


@pytest.mark.parametrize("pair", COMBOS, ids=_ids)
def test_gradients_reach_every_parameter(pair: tuple[str, str]) -> None:
    model = combo(*pair).train()
    out = model(torch.randn(2, IN_CH, 32, 40))
    assert out.shape == (2, OUT_CH, 32, 40)
    out.square().mean().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


@pytest.mark.parametrize("stride", [16, 8])
@pytest.mark.parametrize("encoder", ["resnet18", "vgg11"])
def test_deeplab_with_encoder_follows_output_stride(encoder: str, stride: int) -> None:
    model = combo("deeplabv3plus", encoder, output_stride=stride).eval()
    x = torch.randn(1, IN_CH, 64, 64)
    with torch.no_grad():
        features = model.encoder(x)
        assert model(x).shape == (1, OUT_CH, 64, 64)
    assert model.total_stride == stride
    assert features[model.low].shape[-1] == 16 and features[-1].shape[-1] == 64 // stride


def test_unet_with_vgg11_is_ternausnet_shaped() -> None:
    model = combo("unet", "vgg11")
    assert model.skips == [4, 3, 2, 1, 0]  # every decoder step concatenates the VGG stage at its stride
    assert combo("unet", "resnet34").skips == [3, 2, 1, 0, -1]  # ResNets have no stride-1 feature


# ----------------------------------------------------------------------------- training


def _train_yaml(tmp: Path) -> dict[str, Any]:
    bands = [{"name": n, "index": i + 1} for i, n in enumerate(("blue", "green", "red", "nir"))]
    return {
        "model": {
            "name": "enc-net",
            "architecture": {"name": "unet", "args": {"encoder": "resnet18", "decoder_channels": [16, 8, 8, 8, 8]}},
            "bands": bands,
            "chip": 32,
            "classes": [{"name": "background"}, {"name": "water"}, {"name": "vegetation"},
                        {"name": "building", "kind": "thing"}],
        },
        "data": {"synthetic": {"kind": "scenes", "count": 1, "size": 96, "seed": 1}},
        "validation": {"chips": 4},
        "epochs": 1,
        "batch_size": 4,
        "chips_per_epoch": 8,
        "optimizer": {"lr": 1e-9, "weight_decay": 0.0},  # the exported encoder stays the loaded one
        "device": "cpu",
        "output": str(tmp / "run"),
    }


@pytest.mark.filterwarnings("ignore::segflow.errors.SegflowWarning")  # tiny validation set
def test_segflow_train_starts_from_encoder_weights(tmp_path: Path) -> None:
    state = random_torchvision_state("resnet18", 11)
    weights = tmp_path / "resnet18.pth"
    torch.save(state, weights)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(_train_yaml(tmp_path)))
    result = CliRunner().invoke(train_cmd, ["--config", str(config), "--encoder-weights", str(weights), "-q"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    package = tmp_path / "run" / "package"
    exported = load_file(str(package / "model.safetensors"))
    names = [n for n, _ in build_encoder("resnet18", 4).named_parameters()]
    assert len(names) == 60
    for name in names:  # parameters, not BatchNorm statistics, which training updates
        expected = state[name]
        if name == "conv1.weight":  # 4 bands: blue, green, red, nir get R, G, B, R x 3/4
            expected = torch.cat([expected, expected[:, :1]], dim=1) * 0.75
        torch.testing.assert_close(exported[f"encoder.{name}"], expected, rtol=0, atol=1e-6)
    spec = resolve_package(package).spec
    assert spec.architecture is not None and spec.architecture.args["encoder"] == "resnet18"
    net = load_module(resolve_package(package))
    assert net(torch.randn(1, 4, 40, 40)).shape == (1, 4, 40, 40)
    readme = (package / "README.md").read_text()
    assert "--encoder-weights" in readme and "encoder_weights:" in readme
    assert json.loads((tmp_path / "run" / "history.json").read_text())["epochs"][0]["epoch"] == 1


@pytest.mark.filterwarnings("ignore::segflow.errors.SegflowWarning")
def test_encoder_weights_config_and_refusals(tmp_path: Path) -> None:
    raw = _train_yaml(tmp_path)
    raw["model"]["encoder_weights"] = "weights/resnet18.pth"
    config = train_config_from_dict(raw)
    assert config.model.encoder_weights == Path("weights/resnet18.pth")
    with pytest.raises(ConfigError, match="not both"):
        train_config_from_dict({**raw, "init": "demo-unet-2d"})
    weights = tmp_path / "r34.pth"
    torch.save(random_torchvision_state("resnet34"), weights)
    runner = CliRunner()
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(_train_yaml(tmp_path)))
    wrong = runner.invoke(train_cmd, ["--config", str(path), "--encoder-weights", str(weights), "-q"])
    assert isinstance(wrong.exception, ModelError) and "unexpected keys" in str(wrong.exception)
    builtin = _train_yaml(tmp_path)
    builtin["model"]["architecture"] = {"name": "unet", "args": {"channels": [4, 8]}}
    path.write_text(yaml.safe_dump(builtin))
    none = runner.invoke(train_cmd, ["--config", str(path), "--encoder-weights", str(weights), "-q"])
    assert isinstance(none.exception, ConfigError) and "encoder" in str(none.exception)


@pytest.mark.parametrize(("name", "channels"), [("resnet18", (16, 16, 32, 64, 128)),
                                                ("resnet50", (16, 64, 128, 256, 512))])
def test_slim_resnet_trunks(name: str, channels: tuple[int, ...]) -> None:
    trunk = build_encoder(name, 2, base_width=16)
    assert trunk.channels == channels
    features = trunk(torch.zeros(1, 2, 64, 64))
    assert [f.shape[1] for f in features] == list(channels)
    assert [64 // f.shape[-1] for f in features] == [2, 4, 8, 16, 32]
    full = sum(p.numel() for p in build_encoder(name, 2).parameters())
    assert sum(p.numel() for p in trunk.parameters()) < full / 12


def test_base_width_is_refused_where_it_cannot_apply() -> None:
    with pytest.raises(ConfigError, match="base_width is for ResNet encoders"):
        build_encoder("vgg11", 3, base_width=32)
    with pytest.raises(ConfigError, match="base_width=2 is invalid"):
        build_encoder("resnet18", 3, base_width=2)
