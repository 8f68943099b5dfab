"""Export a model package's network to ONNX or TorchScript as a new, self-contained package.

The exported network is checked before anything is written: it must give the source network's
outputs (within ``1e-4``) at a spatial size *different* from the one it was exported at and
for a batch of two, so a model whose trace baked in the tile size or batch size is refused.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import nn

from ..errors import ConfigError, ModelError, OutputError
from ..io.atomic import atomic_path
from .formats import OnnxModule, load_onnx, load_torchscript
from .loading import load_module
from .package import ModelPackage, ModelSpec, resolve_package

__all__ = ["EXPORT_FORMATS", "export_package", "verification_shape"]

ExportFormat = Literal["onnx", "torchscript"]
EXPORT_FORMATS: dict[str, str] = {"onnx": "model.onnx", "torchscript": "model.ts"}
TOLERANCE = 1e-4
_SPATIAL_NAMES = ("z", "y", "x")


def verification_shape(tile: tuple[int, ...]) -> tuple[int, ...]:
    """A spatial size that differs from ``tile`` on every axis: ``t + 7`` below 64, else ``t // 2 + 3``."""
    return tuple(t + 7 if t < 64 else t // 2 + 3 for t in tile)


def _example(spec: ModelSpec, batch: int, spatial: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, len(spec.input.bands), *spatial), generator=gen)


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path, spatial_dims: int) -> None:
    axes = {0: "batch", **{2 + i: name for i, name in enumerate(_SPATIAL_NAMES[-spatial_dims:])}}
    torch.onnx.export(
        module, (example,), str(path), opset_version=17, dynamo=False,
        input_names=["input"], output_names=["logits"], dynamic_axes={"input": axes, "logits": axes},
    )


def _export_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    traced = torch.jit.trace(module, (example,), check_trace=False)
    traced.save(str(path))


def _write_network(module: nn.Module, spec: ModelSpec, fmt: ExportFormat, path: Path) -> None:
    example = _example(spec, 1, spec.tile_shape, seed=0)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if fmt == "onnx":
                _export_onnx(module, example, path, spec.spatial_dims)
            else:
                _export_torchscript(module, example, path)
    except ModelError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot export model {spec.name!r} to {fmt}: {first[:300]}") from None


def _verify(source: nn.Module, exported: nn.Module, spec: ModelSpec, fmt: str) -> None:
    """Refuse the export when it disagrees with ``source`` at another spatial size and batch 2."""
    spatial = verification_shape(spec.tile_shape)
    x = _example(spec, 2, spatial, seed=1)
    with torch.no_grad():
        try:
            got = exported(x)
        except ModelError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"the {fmt} export of model {spec.name!r} fails on input {tuple(x.shape)} (exported at tile "
                f"{spec.tile_shape}): {first[:200]}; the network must accept any spatial size"
            ) from None
        want = source(x)
    if tuple(got.shape) != tuple(want.shape):
        raise ModelError(
            f"the {fmt} export of model {spec.name!r} returns shape {tuple(got.shape)} for input "
            f"{tuple(x.shape)} where the source returns {tuple(want.shape)}; it baked in the export size"
        )
    diff = float((got.float() - want.float()).abs().max()) if want.numel() else 0.0
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    if not diff <= TOLERANCE * scale:
        raise ModelError(
            f"the {fmt} export of model {spec.name!r} differs from the source by {diff:.3g} (> {TOLERANCE:g}) "
            f"at input {tuple(x.shape)}; the network has size-dependent Python logic that tracing froze at "
            f"{spec.tile_shape}: make it traceable or export at the size you run"
        )


def _load_exported(path: Path, spec: ModelSpec) -> nn.Module:
    if path.suffix == ".onnx":
        return load_onnx(path, spec)
    return load_torchscript(path, spec.name).eval()


def _exported_yaml(package: ModelPackage, weights_name: str) -> str:
    raw: dict[str, Any] = yaml.safe_load((package.root / "model.yaml").read_text(encoding="utf-8"))
    raw["weights"] = weights_name
    raw.pop("architecture", None)  # the exported file holds the whole network
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)


def _prepare_output(output_dir: Path) -> None:
    """Refuse an ``output_dir`` that exists (unless it is an empty folder); create its parent."""
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise OutputError(
            f"output {output_dir} already exists; choose a new --output folder or remove the old one"
        )
    parent = output_dir.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write into {parent} ({exc.strerror}); choose a writable --output") from None


def export_package(source: str | os.PathLike[str], output_dir: str | os.PathLike[str], fmt: str) -> Path:
    """Export a model package's network to ONNX or TorchScript as a new package folder.

    Parameters
    ----------
    source : str or PathLike
        A built-in model name, package directory, ``model.yaml`` or package archive.
    output_dir : str or PathLike
        The new package folder; must not exist yet (an empty folder is accepted).
    fmt : {"onnx", "torchscript"}
        ONNX: opset 17, input ``input`` / output ``logits``, dynamic batch and spatial axes.
        TorchScript: ``torch.jit.trace`` at the model's tile size.

    Returns
    -------
    Path
        ``output_dir``, holding ``model.yaml`` (``weights:`` updated, ``architecture`` removed) and
        ``model.onnx`` or ``model.ts``. Written atomically: a failed export leaves nothing behind.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    export_fmt: ExportFormat = "onnx" if fmt == "onnx" else "torchscript"
    output = Path(output_dir)
    package = resolve_package(os.fspath(source))
    spec = package.spec
    if spec.instances:
        raise ModelError(f"model {spec.name!r} is an instance model (Mask R-CNN), whose detections have "
                         "data-dependent shapes: it is not exported; use the package as it is")
    module = load_module(package)
    if isinstance(module, OnnxModule):
        raise ModelError(
            f"model {spec.name!r} is already ONNX ({package.weights_path}); segflow cannot convert ONNX back to "
            "PyTorch: use the package as it is"
        )
    _prepare_output(output)
    with atomic_path(output, hint="choose a writable --output") as staging:
        staging.mkdir()
        weights = staging / EXPORT_FORMATS[export_fmt]
        _write_network(module, spec, export_fmt, weights)
        _verify(module, _load_exported(weights, spec), spec, export_fmt)
        (staging / "model.yaml").write_text(_exported_yaml(package, weights.name), encoding="utf-8")
        if output.is_dir():
            output.rmdir()  # empty when checked; fails (nothing replaced) if something was put there since
    return output
