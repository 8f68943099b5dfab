"""Turn a model package into a ``torch.nn.Module`` in eval mode, on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from .package import ModelPackage
from .spectral import build_spectral_index

__all__ = ["load_module"]


def _build_architecture(package: ModelPackage) -> nn.Module:
    spec = package.spec
    assert spec.architecture is not None
    args: dict[str, Any] = dict(spec.architecture.args)
    try:
        if spec.architecture.name == "spectral-index":
            return build_spectral_index([b.name.lower() for b in spec.input.bands], **args)
        from .arch import build_architecture

        return build_architecture(
            spec.architecture.name,
            spatial_dims=spec.spatial_dims,
            in_channels=len(spec.input.bands),
            out_channels=spec.output_channels,
            **args,
        )
    except (ConfigError, TypeError) as exc:
        raise ModelError(f"model {spec.name!r}: cannot build architecture {spec.architecture.name!r}: {exc}") from None


def _load_torchscript(path: Path, name: str) -> nn.Module:
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model {name!r}: {path} is not a loadable TorchScript file ({first})") from None
    return module


def load_module(package: ModelPackage) -> nn.Module:
    """The package's network in eval mode on the CPU, weights loaded."""
    spec = package.spec
    weights = package.weights_path
    if weights is None:
        module = _build_architecture(package)
    elif weights.suffix == ".ts":
        module = _load_torchscript(weights, spec.name)
    else:
        raise ModelError(
            f"model {spec.name!r}: weights {weights.name!r} have an unsupported format; "
            "use TorchScript saved as model.ts"
        )
    return module.eval()
