"""Test helpers: stand-in models that need no weights, model packages and GeoTIFFs written by code."""

from __future__ import annotations

import socket
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
import yaml
from rasterio.transform import from_origin
from torch import nn

from segflow.models.package import ModelSpec

TRANSFORM = from_origin(600000.0, 5100000.0, 10.0, 10.0)
CRS = "EPSG:32632"


class RandomConvNet(nn.Module):
    """A fixed random 2-layer conv net: a stand-in model with real spatial context."""

    def __init__(self, in_channels: int, out_channels: int, seed: int = 0, spatial_dims: int = 2):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        gen = torch.Generator().manual_seed(seed)
        self.a = conv(in_channels, 8, 3, padding=1, padding_mode="replicate")
        self.b = conv(8, out_channels, 3, padding=1, padding_mode="replicate")
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x))) * 3.0


def spec_dict(*, bands: int = 3, classes: int = 3, tile: int = 32, overlap: float = 0.25,
              activation: str = "softmax", weights: str | None = "model.ts", **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": "test-net",
        "version": "0.1",
        "spatial_dims": 2,
        "weights": weights,
        "input": {"bands": [{"name": f"b{i + 1}", "index": i + 1} for i in range(bands)],
                  "normalization": {"mode": "scale", "scale": 0.001}},
        "tile": tile,
        "overlap": overlap,
        "output": {"activation": activation},
        "classes": [{"name": f"c{i}", "kind": "stuff"} for i in range(classes)],
    }
    if weights is None:
        d["architecture"] = {"name": "unet"}
    d.update(extra)
    return d


def make_spec(**kw: Any) -> ModelSpec:
    return ModelSpec.model_validate(spec_dict(**kw))


def make_ts_package(root: Path, *, bands: int = 3, classes: int = 3, tile: int = 32, seed: int = 0,
                    spatial_dims: int = 2, **kw: Any) -> Path:
    """Write a TorchScript model package (random conv net, 2D or 3D) to ``root`` and return it."""
    root.mkdir(parents=True, exist_ok=True)
    net = RandomConvNet(bands, classes, seed, spatial_dims=spatial_dims).eval()
    traced = torch.jit.trace(net, torch.zeros(1, bands, *(tile,) * spatial_dims))
    traced.save(str(root / "model.ts"))
    spec = spec_dict(bands=bands, classes=classes, tile=tile, spatial_dims=spatial_dims, **kw)
    (root / "model.yaml").write_text(yaml.safe_dump(spec))
    return root


def write_geotiff(path: Path, array: np.ndarray, *, nodata: float | None = None, tiled: bool = True,
                  block: int = 64, crs: str | None = CRS, transform: Any = TRANSFORM,
                  descriptions: list[str] | None = None) -> Path:
    count, height, width = array.shape
    profile: dict[str, Any] = {"driver": "GTiff", "width": width, "height": height, "count": count,
                               "dtype": array.dtype.name, "nodata": nodata, "compress": "deflate"}
    if crs:
        profile.update(crs=crs, transform=transform)
    if tiled:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
        if descriptions:
            dst.descriptions = tuple(descriptions)
    return path


def random_image(shape: tuple[int, ...], seed: int = 0, dtype: str = "uint16") -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = rng.random(shape).cumsum(axis=-1).cumsum(axis=-2)
    smooth = smooth / smooth.max() * 4000 + rng.random(shape) * 500
    return smooth.astype(dtype)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for servers started by test fixtures)."""
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Threshold(nn.Module):
    """Class 1 where the (single) input channel is > t, else class 0, as probabilities."""

    def __init__(self, t: float):
        super().__init__()
        self.t = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        above = (x[:, :1] > self.t).float()
        return torch.cat([1.0 - above, above], dim=1)


def threshold_package(root: Path, t: float, *, band: int | None = None, tile: int = 12,
                      second: dict[str, Any] | None = None) -> Path:
    """A 3D TorchScript package of :class:`Threshold`: class 0 ``background``, class 1 ``second``
    (default a stuff class ``bright``)."""
    root.mkdir(parents=True, exist_ok=True)
    torch.jit.trace(Threshold(t), torch.zeros(1, 1, 4, 4, 4)).save(str(root / "model.ts"))
    spec = {"name": "threshold", "version": "1", "spatial_dims": 3, "weights": "model.ts",
            "input": {"bands": [{"name": "image", **({"index": band} if band else {})}],
                      "normalization": {"mode": "none"}},
            "tile": tile, "overlap": 0.25, "output": {"activation": "none"},
            "classes": [{"name": "background", "color": [0, 0, 0]},
                        second or {"name": "bright", "color": [255, 0, 0]}]}
    (root / "model.yaml").write_text(yaml.safe_dump(spec))
    return root


def tiny_train_dict(tmp_path: Path, architecture: dict[str, Any], *, name: str | None = None,
                    classes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A ``segflow train`` config for one tiny epoch of ``architecture`` on synthetic 4-band scenes (chip 32,
    tile 48, classes background/water/vegetation/building unless ``classes``), written to ``tmp_path/run``."""
    return {
        "model": {
            "name": name or f"tiny-{architecture['name']}",
            "architecture": architecture,
            "bands": [{"name": n, "index": i + 1} for i, n in enumerate(("blue", "green", "red", "nir"))],
            "chip": 32,
            "tile": 48,
            "classes": classes or [{"name": n} for n in ("background", "water", "vegetation", "building")],
        },
        "data": {"synthetic": {"kind": "scenes", "count": 2, "size": 128, "seed": 1}},
        "validation": {"chips": 4},
        "epochs": 1,
        "batch_size": 4,
        "chips_per_epoch": 8,
        "device": "cpu",
        "output": str(tmp_path / "run"),
    }


def train_one_epoch(tmp_path: Path, architecture: dict[str, Any]) -> nn.Module:
    """``segflow train --config`` for one tiny epoch of ``architecture`` on synthetic 4-band scenes (4 classes,
    chip 32, tile 48); checks the run's history and returns the written package's network, loaded."""
    import json

    from click.testing import CliRunner

    from segflow.cli.train import train_cmd
    from segflow.models import load_module, resolve_package

    config = tiny_train_dict(tmp_path, architecture)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(train_cmd, ["--config", str(path), "-q"])
    assert result.exit_code == 0, result.output
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1]
    assert np.isfinite(history["epochs"][0]["train_loss"])
    package = resolve_package(tmp_path / "run" / "package")
    assert package.spec.architecture is not None and package.spec.architecture.name == architecture["name"]
    return load_module(package).eval()
