"""Test-time augmentation: mirrored copies averaged before blending, batched, in 2D and 3D."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from segflow.errors import ConfigError
from segflow.predict import Predictor, flip_axes
from segflow.tile_infer import TileInferParams, tile_infer

from .helpers import make_spec, make_ts_package, random_image, write_geotiff


class Counting(nn.Module):
    """Wraps a network; counts its forward calls and the windows of each."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        return self.inner(x)


def asymmetric(spatial_dims: int, channels: int = 3, classes: int = 3, seed: int = 0) -> nn.Module:
    """A convolution whose random 3^d kernel is not mirror-symmetric: its output changes under flips."""
    conv = (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(channels, classes, 3, padding=1)
    gen = torch.Generator().manual_seed(seed)
    assert conv.bias is not None
    with torch.no_grad():
        for p, scale in ((conv.weight, 2.0), (conv.bias, 1.0)):
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return conv.eval()


def windows(n: int, spatial: tuple[int, ...], seed: int = 0, bands: int = 3) -> np.ndarray:
    return random_image((n, bands, *spatial), seed=seed).astype(np.float32)


def by_hand(net: nn.Module, x: np.ndarray, spatial_dims: int) -> np.ndarray:
    """Mean over every mirrored copy of softmax(net(flip(x * 0.001))), flipped back, with torch.flip."""
    t = torch.from_numpy(x) * 0.001  # make_spec normalises by scale 0.001
    axes = [(), *[(a,) for a in range(2, 2 + spatial_dims)]]
    if spatial_dims == 2:
        axes.append((2, 3))
    else:
        axes += [(2, 3), (2, 4), (3, 4), (2, 3, 4)]
    with torch.inference_mode():
        copies = [torch.softmax(net(torch.flip(t, a) if a else t), dim=1) for a in axes]
        copies = [torch.flip(p, a) if a else p for p, a in zip(copies, axes, strict=True)]
    return torch.stack(copies).mean(0).numpy()


def test_flip_axes() -> None:
    assert flip_axes(2) == [(), (2,), (3,), (2, 3)]
    three = flip_axes(3)
    assert len(three) == len(set(three)) == 8 and three[0] == () and (2, 3, 4) in three


def test_a_flip_equivariant_model_gives_the_same_probabilities() -> None:
    torch.manual_seed(0)
    net = nn.Conv2d(3, 3, 1).eval()  # per pixel: mirroring commutes with it
    spec = make_spec(tile=16)
    x = windows(5, (16, 16))
    plain = Predictor(net, spec, device="cpu", batch_size=4, optimize=False)(x)
    tta = Predictor(net, spec, device="cpu", batch_size=4, optimize=False, tta="flips")(x)
    np.testing.assert_allclose(tta, plain, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("spatial_dims", "tile"), [(2, (20, 24)), (3, (6, 8, 10))])
def test_a_mirror_sensitive_model_gives_the_mean_of_the_flipped_predictions(spatial_dims: int,
                                                                            tile: tuple[int, ...]) -> None:
    net = asymmetric(spatial_dims)
    spec = make_spec(tile=list(tile), spatial_dims=spatial_dims)
    x = windows(5, tile, seed=3)
    expected = by_hand(net, x, spatial_dims)
    plain = Predictor(net, spec, device="cpu", batch_size=3, optimize=False)(x)
    assert np.abs(plain - expected).max() > 0.05  # the flips matter for this model
    for batch in (1, 3, 8, 64):  # copies of several flips share a forward pass for batch > 5
        got = Predictor(net, spec, device="cpu", batch_size=batch, optimize=False, tta="flips")(x)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    optimised = Predictor(net, spec, device="cpu", batch_size=4, tta="flips")  # traced, frozen, channels-last
    np.testing.assert_allclose(optimised(x), expected, rtol=1e-4, atol=1e-5)
    assert isinstance(optimised.module, torch.jit.ScriptModule)


@pytest.mark.parametrize(("spatial_dims", "n", "batch"), [(2, 5, 3), (2, 5, 8), (3, 3, 4), (3, 1, 16)])
def test_copies_go_through_the_network_at_most_batch_size_at_a_time(spatial_dims: int, n: int, batch: int) -> None:
    counting = Counting(asymmetric(spatial_dims))
    tile = (8,) * spatial_dims
    spec = make_spec(tile=8, spatial_dims=spatial_dims)
    x = windows(n, tile)
    predictor = Predictor(counting, spec, device="cpu", batch_size=batch, optimize=False, tta="flips")
    out = predictor(x)
    copies = 2**spatial_dims
    per_call = [min(batch, n - i) for i in range(0, n, batch)]  # windows per predict_batch
    expected = [min(batch, copies * k - s) for k in per_call for s in range(0, copies * k, batch)]
    assert counting.sizes == expected
    assert max(counting.sizes) <= batch and sum(counting.sizes) == copies * n
    assert len(counting.sizes) == sum(math.ceil(copies * k / batch) for k in per_call)
    assert out.shape == (n, 3, *tile)


def test_sigmoid_models_average_both_classes() -> None:
    net = asymmetric(2, classes=1)
    spec = make_spec(tile=12, classes=2, activation="sigmoid")
    x = windows(2, (12, 12))
    got = Predictor(net, spec, device="cpu", optimize=False, tta="flips")(x)
    t = torch.from_numpy(x) * 0.001
    with torch.inference_mode():
        p = torch.stack([torch.flip(torch.sigmoid(net(torch.flip(t, a))), a) for a in [(2,), (3,), (2, 3)]]
                        + [torch.sigmoid(net(t))]).mean(0).numpy()
    np.testing.assert_allclose(got[:, 1:], p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-6)


def test_unknown_tta_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown test-time augmentation 'rotate'; use one of none, flips"):
        Predictor(nn.Conv2d(3, 3, 1), make_spec(tile=8), device="cpu", tta="rotate")
    with pytest.raises(ConfigError, match="tta must be one of none, flips, got 'all'"):
        TileInferParams(tta="all").check()


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tta")
    return (write_geotiff(root / "s.tif", random_image((3, 101, 87), seed=5)),
            make_ts_package(root / "pkg", tile=32, seed=2))


def _scores(out: Path) -> np.ndarray:
    scores: Any = zarr.open_group(str(out / "mask.zarr"), mode="r")["scores"]
    return np.asarray(scores[...], dtype=np.float32)


def test_tile_infer_with_flips_is_independent_of_chunking(scene: tuple[Path, Path], tmp_path: Path) -> None:
    image, pkg = scene
    runs = {}
    for chunk in (40, 64):
        out = tmp_path / f"c{chunk}"
        tile_infer(image, out, TileInferParams(model=str(pkg), device="cpu", chunk=chunk, batch=3, tta="flips",
                                               save_scores=True))
        runs[chunk] = _scores(out)
        record = json.loads((out / "run.json").read_text())
        assert record["effective"]["tta"] == "flips" and record["effective"]["precision"] == "fp32"
        assert record["parameters"]["tta"] == "flips"
    np.testing.assert_allclose(runs[40], runs[64], atol=1e-3)  # float16 scores; blending order may round
    plain = tmp_path / "plain"
    tile_infer(image, plain, TileInferParams(model=str(pkg), device="cpu", chunk=40, save_scores=True))
    assert np.abs(_scores(plain) - runs[40]).max() > 0.01  # the flips changed the probabilities


def test_another_tta_recomputes_the_run(scene: tuple[Path, Path], tmp_path: Path) -> None:
    image, pkg = scene
    out = tmp_path / "out"
    first = tile_infer(image, out, TileInferParams(model=str(pkg), device="cpu", chunk=64))
    fingerprint = json.loads((out / "run.json").read_text())["run"]["fingerprint"]
    assert tile_infer(image, out, TileInferParams(model=str(pkg), device="cpu", chunk=64)).chunks_computed == 0
    flips = tile_infer(image, out, TileInferParams(model=str(pkg), device="cpu", chunk=64, tta="flips"))
    assert flips.chunks_computed == first.chunks_computed == 4 and flips.chunks_reused == 0
    assert json.loads((out / "run.json").read_text())["run"]["fingerprint"] != fingerprint
