"""Turn a model package into a ``torch.nn.Module`` in eval mode, on the CPU.

The weights format follows the suffix of ``model.yaml``'s ``weights:`` file (see
:mod:`segflow.models.formats`): ``.safetensors`` / ``.pt`` / ``.pth`` hold parameters for the
declared ``architecture``, ``.ts`` is TorchScript, ``.onnx`` runs through onnxruntime. A
package without weights is its architecture (e.g. the built-in spectral-index models and the
Hounsfield-unit model ``hounsfield`` of ``ct-tissue``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from .formats import SUPPORTED_SUFFIXES, apply_state_dict, load_onnx, load_state_dict_file, load_torchscript
from .hounsfield import build_hounsfield
from .package import ModelPackage, ModelSpec
from .spectral import build_spectral_index

__all__ = ["build_network", "load_module"]


def _build_architecture(spec: ModelSpec) -> nn.Module:
    assert spec.architecture is not None
    args: dict[str, Any] = dict(spec.architecture.args)
    try:
        if spec.architecture.name == "spectral-index":
            return build_spectral_index([b.name.lower() for b in spec.input.bands], **args)
        if spec.architecture.name == "hounsfield":
            return build_hounsfield(len(spec.input.bands), len(spec.classes), **args)
        if spec.instances:
            from .maskrcnn import build_maskrcnn

            return build_maskrcnn(len(spec.input.bands), len(spec.classes), args)
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


def build_network(spec: ModelSpec, state: Mapping[str, torch.Tensor] | None = None, *,
                  weights_name: str = "state dict") -> nn.Module:
    """The network ``spec.architecture`` describes, in eval mode on the CPU, ``state`` loaded strictly.

    The one builder of networks from a contract: :func:`load_module` uses it for packages whose
    weights hold parameters (or that have none), and the package writer
    (:mod:`segflow.models.writer`) to check a trained network before it is published. It maps
    float32 ``(N, len(input.bands), *spatial)`` to ``(N, output_channels, *spatial)``.

    Raises
    ------
    ModelError
        If the architecture cannot be built from its args, or ``state`` does not fit it (the
        message names ``weights_name``, missing / unexpected keys and shape mismatches).
    """
    if spec.architecture is None:
        raise ModelError(
            f"model {spec.name!r}: weights {weights_name} hold only parameters but model.yaml declares no "
            "architecture; add architecture: {name: unet, args: {...}} (see segflow.models.arch)"
        )
    module = _build_architecture(spec)
    if state is not None:
        apply_state_dict(module, state, spec, weights_name)
    return module.eval()


def _load_parameters(package: ModelPackage, weights: Path) -> nn.Module:
    spec = package.spec
    module = build_network(spec, weights_name=weights.name)
    apply_state_dict(module, load_state_dict_file(weights), spec, weights.name)
    return module


def load_module(package: ModelPackage) -> nn.Module:
    """The package's network in eval mode on the CPU, weights loaded.

    Parameters
    ----------
    package : ModelPackage
        A package from :func:`~segflow.models.package.resolve_package`.

    Returns
    -------
    torch.nn.Module
        Maps float32 ``(N, C_in, *spatial)`` to ``(N, C_out, *spatial)`` (``spatial`` = ``(Y, X)`` or
        ``(Z, Y, X)``); for ONNX weights an :class:`~segflow.models.formats.OnnxModule`.
    """
    spec = package.spec
    weights = package.weights_path
    suffix = "" if weights is None else weights.suffix.lower()
    if weights is None:
        module = build_network(spec)
    elif suffix in (".safetensors", ".pt", ".pth"):
        module = _load_parameters(package, weights)
    elif suffix == ".ts":
        module = load_torchscript(weights, spec.name)
    elif suffix == ".onnx":
        module = load_onnx(weights, spec)
    else:
        raise ModelError(
            f"model {spec.name!r}: weights {weights.name!r} have an unsupported format; "
            f"use one of {', '.join(SUPPORTED_SUFFIXES)} (safetensors preferred)"
        )
    return module.eval()
