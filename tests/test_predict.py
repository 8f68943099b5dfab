"""Predictor: normalisation, activation, batching, inference optimisation and devices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from segflow.errors import DeviceError
from segflow.predict import Predictor, resolve_device
from segflow.tile_infer import TileInferParams, tile_infer

from .helpers import RandomConvNet, make_spec, make_ts_package, random_image, write_geotiff

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def windows(n: int = 5, size: int = 32, seed: int = 0) -> np.ndarray:
    return random_image((n, 3, size, size), seed=seed).astype(np.float32)


def test_normalisation_and_softmax_match_a_hand_written_forward() -> None:
    net = RandomConvNet(3, 3).eval()
    spec = make_spec(tile=32)  # scale 0.001
    x = windows()
    with torch.inference_mode():
        expected = torch.softmax(net(torch.from_numpy(x) * 0.001), dim=1).numpy()
    got = Predictor(net, spec, device="cpu", batch_size=2, optimize=False)(x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)  # batch size changes float32 rounding


def test_the_callers_windows_are_never_modified() -> None:
    spec = make_spec(tile=16)
    for dtype in ("float32", "uint16", "float64"):
        x = windows(3, size=16).astype(dtype)
        before = x.copy()
        Predictor(RandomConvNet(3, 3).eval(), spec, device="cpu", optimize=False)(x)
        np.testing.assert_array_equal(x, before)


def test_meanstd_and_sigmoid() -> None:
    class Mean(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=1, keepdim=True)

    spec = make_spec(classes=2, activation="sigmoid",
                     input={"bands": [{"name": "a"}, {"name": "b"}],
                            "normalization": {"mode": "meanstd", "mean": [1.0, 2.0], "std": [2.0, 4.0]}})
    x = np.stack([np.full((4, 4), 3.0), np.full((4, 4), 6.0)])[None].astype(np.float32)
    p = Predictor(Mean(), spec, device="cpu", optimize=False)(x)
    z = (1.0 + 1.0) / 2  # ((3-1)/2 + (6-2)/4) / 2
    np.testing.assert_allclose(p[0, 1], 1 / (1 + np.exp(-z)), rtol=1e-6)
    np.testing.assert_allclose(p[0, 0] + p[0, 1], 1.0, rtol=1e-6)


def test_optimised_network_gives_the_same_probabilities() -> None:
    net = RandomConvNet(3, 3, seed=4).eval()
    spec = make_spec(tile=32)
    x = windows(7)
    plain = Predictor(net, spec, device="cpu", batch_size=3, optimize=False)(x)
    fast_predictor = Predictor(net, spec, device="cpu", batch_size=3, optimize=True)
    fast = fast_predictor(x)
    assert isinstance(fast_predictor.module, torch.jit.ScriptModule)
    assert fast_predictor.memory_format == torch.channels_last
    assert fast.flags.c_contiguous
    np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-5)
    assert net.a.weight.is_contiguous()  # the caller's network is left as it was (a copy is converted)


def test_a_3d_network_is_optimised_in_channels_last_3d_order() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 3, 1)).eval()
    spec = make_spec(tile=8, spatial_dims=3, bands=1)
    x = np.random.default_rng(1).normal(size=(3, 1, 8, 8, 8)).astype(np.float32) * 1000
    plain = Predictor(net, spec, device="cpu", batch_size=3, optimize=False)(x)
    fast_predictor = Predictor(net, spec, device="cpu", batch_size=3)
    fast = np.concatenate([fast_predictor(x), fast_predictor(x)])
    assert fast_predictor.memory_format == torch.channels_last_3d
    np.testing.assert_allclose(fast, np.concatenate([plain, plain]), rtol=1e-4, atol=1e-5)


def test_a_network_that_cannot_be_traced_runs_as_it_is() -> None:
    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.stack([x[:, 0], -x[:, 0], x[:, 1]], dim=1)
            return out if float(x.mean()) > 0 else -out  # traced, this branch would be frozen

    net = DataDependent()
    spec = make_spec(tile=8)
    predictor = Predictor(net, spec, device="cpu", batch_size=1)  # the branch looks at the whole batch
    x = np.stack([np.ones((3, 8, 8)), -np.ones((3, 8, 8))]).astype(np.float32)
    got = predictor(x)
    assert predictor.module is net
    with torch.inference_mode():
        expected = torch.cat([torch.softmax(net(t[None] * 0.001), dim=1) for t in torch.from_numpy(x)]).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_an_optimised_network_that_disagrees_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    class Wrong(nn.Module):
        def __init__(self, inner: torch.jit.ScriptModule):
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) + 1.0

    monkeypatch.setattr(torch.jit, "freeze", lambda m: Wrong(m))
    net = RandomConvNet(3, 3, seed=4).eval()
    spec = make_spec(tile=32)
    x = windows(4)
    plain = Predictor(net, spec, device="cpu", optimize=False)(x)
    predictor = Predictor(net, spec, device="cpu", batch_size=4)
    np.testing.assert_allclose(predictor(x), plain, rtol=1e-5, atol=1e-6)
    assert predictor.module is net
    assert predictor.memory_format is None


def test_invalid_pixels_are_zeroed_before_the_network() -> None:
    seen: list[torch.Tensor] = []

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.clone())
            return x

    spec = make_spec(tile=4)
    x = np.full((1, 3, 4, 4), 5000.0, dtype=np.float32)
    valid = np.ones((1, 4, 4), dtype=bool)
    valid[0, 0, 0] = False
    Predictor(Spy(), spec, device="cpu", optimize=False)(x, valid)
    assert float(seen[0][0, :, 0, 0].abs().max()) == 0.0 and float(seen[0][0, 0, 1, 1]) == pytest.approx(5.0)


def test_device_names() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.fixture
def no_tf32():  # type: ignore[no-untyped-def]
    """cuDNN convolutions default to TF32 on Ampere and newer; compare float32 with float32."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


@cuda
def test_cuda_path_matches_cpu_without_amp_and_closely_with_amp(no_tf32) -> None:  # type: ignore[no-untyped-def]
    net = RandomConvNet(3, 3, seed=5).eval()
    spec = make_spec(tile=32)
    x = windows(9)
    cpu = Predictor(net, spec, device="cpu", batch_size=4, optimize=False)(x)
    gpu = Predictor(RandomConvNet(3, 3, seed=5).eval(), spec, device="cuda", batch_size=4, precision="fp32")(x)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)
    reduced = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    amp = Predictor(RandomConvNet(3, 3, seed=5).eval(), spec, device="cuda", batch_size=4, precision=reduced,
                    warn=False)
    assert amp.amp_dtype in (torch.bfloat16, torch.float16)
    np.testing.assert_allclose(amp(x), cpu, atol=5e-2)
    assert (amp(x).argmax(1) == cpu.argmax(1)).mean() > 0.97


@cuda
def test_tile_infer_on_cuda_agrees_with_cpu(tmp_path: Path, no_tf32) -> None:  # type: ignore[no-untyped-def]
    pkg = make_ts_package(tmp_path / "pkg", tile=48)
    scene = write_geotiff(tmp_path / "s.tif", random_image((3, 300, 260), seed=9))
    cpu = tile_infer(scene, tmp_path / "cpu", TileInferParams(model=str(pkg), device="cpu", chunk=128))
    gpu = tile_infer(scene, tmp_path / "gpu", TileInferParams(model=str(pkg), device="cuda", chunk=128, amp=False))
    assert cpu.windows_evaluated == gpu.windows_evaluated
    import rasterio

    with rasterio.open(tmp_path / "cpu" / "labels.tif") as a, rasterio.open(tmp_path / "gpu" / "labels.tif") as b:
        assert (a.read(1) == b.read(1)).mean() > 0.999
