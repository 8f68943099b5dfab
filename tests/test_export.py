"""``segflow models export``: ONNX / TorchScript packages that give the source's outputs at any size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

from segflow.cli.models import export_cmd
from segflow.errors import ConfigError, ModelError, OutputError
from segflow.models import export as export_mod
from segflow.models import load_module, resolve_package
from segflow.models.export import export_package, verification_shape
from segflow.models.formats import OnnxModule

from .test_model_formats import BANDS, unet, write_package


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return unet(seed=4)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, net: nn.Module) -> Path:
    return write_package(tmp_path_factory.mktemp("src") / "unet", "model.safetensors",
                         lambda p: save_file(dict(net.state_dict()), str(p)))


def leftovers(folder: Path) -> list[str]:
    """Hidden staging or moved-aside entries (segflow.io.atomic's temporaries) left in ``folder``."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(("fmt", "weights"), [("onnx", "model.onnx"), ("torchscript", "model.ts")])
def test_export_round_trips(fmt: str, weights: str, source: Path, net: nn.Module, tmp_path: Path) -> None:
    out = export_package(source, tmp_path / "exported", fmt)
    assert out == tmp_path / "exported"
    assert sorted(p.name for p in out.iterdir()) == sorted(["model.yaml", weights])
    raw = yaml.safe_load((out / "model.yaml").read_text())
    original = yaml.safe_load((source / "model.yaml").read_text())
    assert raw["weights"] == weights and "architecture" not in raw
    assert {k: v for k, v in raw.items() if k != "weights"} == \
        {k: v for k, v in original.items() if k not in ("weights", "architecture")}
    package = resolve_package(out)
    module = load_module(package)
    assert isinstance(module, OnnxModule) == (fmt == "onnx")
    for shape in [(1, BANDS, 32, 32), (3, BANDS, 45, 19), (2, BANDS, 7, 64)]:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(module(x), net(x), atol=1e-4, rtol=1e-4)
    assert leftovers(tmp_path) == []


def test_builtin_spectral_model_exports(tmp_path: Path) -> None:
    out = export_package("ndwi-water", tmp_path / "ndwi", "onnx")
    source = load_module(resolve_package("ndwi-water"))
    module = load_module(resolve_package(out))
    x = torch.rand(2, 2, 50, 40) * 3000
    with torch.no_grad():
        torch.testing.assert_close(module(x), source(x), atol=1e-4, rtol=1e-4)


def test_existing_output_and_bad_format_are_refused(source: Path, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="already exists; choose a new --output"):
        export_package(source, busy, "onnx")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (export_package(source, empty, "torchscript") / "model.ts").is_file(), "an empty folder is fine"
    with pytest.raises(ConfigError, match="unknown export format 'tflite'; use one of onnx, torchscript"):
        export_package(source, tmp_path / "x", "tflite")
    onnx_pkg = export_package(source, tmp_path / "o", "onnx")
    with pytest.raises(ModelError, match="is already ONNX"):
        export_package(onnx_pkg, tmp_path / "o2", "torchscript")
    assert leftovers(tmp_path) == []


class SizeDependent(nn.Module):
    """Python control flow on the input size: a trace freezes the branch taken at the tile size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(BANDS, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gain = 2.0 if x.shape[-1] == 32 else 1.0
        return self.conv(x) * gain


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_that_only_works_at_the_tile_size_is_refused(fmt: str, source: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_load(package: Any) -> nn.Module:
        return SizeDependent().eval()

    monkeypatch.setattr(export_mod, "load_module", fake_load)
    with pytest.raises(ModelError, match=rf"the {fmt} export of model 'test-net' differs from the source"):
        export_package(source, tmp_path / "bad", fmt)
    assert not (tmp_path / "bad").exists() and leftovers(tmp_path) == []


def test_verification_size_differs_on_every_axis() -> None:
    for tile in [(1,), (10, 10), (32, 64), (512, 512, 63), (64,)]:
        assert all(v != t and v >= 1 for v, t in zip(verification_shape(tile), tile, strict=True))


def test_export_command(source: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(export_cmd, [str(source), "--format", "torchscript", "--output", str(tmp_path / "ts")])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == [f"wrote {tmp_path / 'ts'} (torchscript)"]
    again = runner.invoke(export_cmd, [str(source), "-f", "onnx", "-o", str(tmp_path / "ts")])
    assert again.exit_code != 0 and isinstance(again.exception, OutputError)
    bad = runner.invoke(export_cmd, [str(source), "--format", "tflite", "-o", str(tmp_path / "z")])
    assert bad.exit_code == 2 and "tflite" in bad.output
