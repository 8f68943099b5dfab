"""Registry of segmentation network architectures.

Every network maps ``(N, in_channels, Y, X)`` (2D) or ``(N, in_channels, Z, Y, X)`` (3D) float
input of any spatial size to raw logits ``(N, out_channels, *same spatial size)``: inputs are
padded internally (replicate by default) to a multiple of the network's ``total_stride`` and the
logits are cropped back. Models trace with ``torch.jit.trace`` and export to ONNX with dynamic
N and spatial axes (TorchScript exporter, ``dynamo=False``).

>>> model = build_architecture("unet", spatial_dims=2, in_channels=4, out_channels=3)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from segflow.errors import ConfigError
from segflow.models.arch import deeplabv3plus, fcn8s, fpn, hrnet, linknet, pspnet, refinenet, segnet, unet
from segflow.models.arch.base import ArchInfo, PaddedSegmenter

__all__ = ["ArchInfo", "PaddedSegmenter", "architecture_info", "architecture_names", "build_architecture"]

_Builder = Callable[[int, int, int, dict[str, Any]], nn.Module]

_REGISTRY: dict[str, tuple[ArchInfo, _Builder]] = {
    module.INFO.name: (module.INFO, module.build)
    for module in (unet, deeplabv3plus, fcn8s, segnet, linknet, pspnet, hrnet, refinenet, fpn)
}


def architecture_names() -> list[str]:
    """Names accepted by :func:`build_architecture`, sorted."""
    return sorted(_REGISTRY)


def _lookup(name: object) -> tuple[ArchInfo, _Builder]:
    key = name.strip().lower() if isinstance(name, str) else name
    if not isinstance(key, str) or key not in _REGISTRY:
        raise ConfigError(
            f"unknown architecture {name!r}; known: {', '.join(architecture_names())}. "
            "Pass one of these names"
        )
    return _REGISTRY[key]


def architecture_info(name: str) -> ArchInfo:
    """Metadata of architecture ``name``: supported spatial_dims, description, default kwargs."""
    info = _lookup(name)[0]
    return dataclasses.replace(info, defaults=dict(info.defaults))


def _check_dims(info: ArchInfo, spatial_dims: object) -> int:
    if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
        raise ConfigError(
            f"spatial_dims={spatial_dims!r} is not supported; use 2 for (N, C, Y, X) or 3 for (N, C, Z, Y, X)"
        )
    if spatial_dims not in info.spatial_dims:
        supported = ", ".join(str(d) for d in info.spatial_dims)
        others = ", ".join(n for n, (i, _) in sorted(_REGISTRY.items()) if spatial_dims in i.spatial_dims)
        raise ConfigError(
            f"architecture {info.name!r} does not support spatial_dims={spatial_dims}; "
            f"it supports {supported}. Use one of: {others} for {spatial_dims}D"
        )
    return int(spatial_dims)


def _check_channels(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{key}={value!r} is invalid; expected a positive integer (the number of "
            f"{'input bands' if key == 'in_channels' else 'classes/logit maps'})"
        )
    return value


def build_architecture(
    name: str, *, spatial_dims: int, in_channels: int, out_channels: int, **kwargs: Any
) -> nn.Module:
    """Build architecture ``name`` for ``spatial_dims`` (2: ``(N, C, Y, X)``, 3: ``(N, C, Z, Y, X)``).

    ``kwargs`` override :func:`architecture_info` ``(name).defaults``; unknown names, unsupported
    ``spatial_dims`` and bad options raise :class:`~segflow.errors.ConfigError`. The model maps
    ``(N, in_channels, *spatial)`` to logits ``(N, out_channels, *spatial)`` for any spatial size.
    """
    info, builder = _lookup(name)
    dims = _check_dims(info, spatial_dims)
    cin = _check_channels("in_channels", in_channels)
    cout = _check_channels("out_channels", out_channels)
    unknown = sorted(set(kwargs) - set(info.defaults))
    if unknown:
        raise ConfigError(
            f"architecture {info.name!r} has no option {unknown[0]!r}; its options are: "
            f"{', '.join(info.defaults)}. Remove it or use one of those"
        )
    return builder(dims, cin, cout, {**info.defaults, **kwargs})
