"""Write a trained network as a model package: ``model.yaml`` + ``model.safetensors`` + ``README.md``.

The ``model.yaml`` follows :mod:`segflow.models.package` exactly (it is validated with
``ModelSpec.model_validate`` before anything is written); the weights are the network's state
dict saved as safetensors with a deterministic header (:mod:`segflow.models._safetensors`: the
same weights give the same bytes and SHA-256), loadable strictly into the network
:func:`segflow.models.loading.build_network` builds from the contract (the one that
:func:`~segflow.models.loading.load_module` reads packages with). The directory is built next to
its target and renamed into place, so a reader never sees a half-written package.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import load_file

from ..errors import ConfigError, OutputError
from ..io.atomic import atomic_path
from ._safetensors import safetensors_bytes
from .loading import build_network
from .package import ModelSpec, Normalization

if TYPE_CHECKING:
    from ..training.config import TrainConfig
    from ..training.evaluation import Metrics
    from ..training.nifti import VolumeTarget

__all__ = [
    "WEIGHTS",
    "metrics_table",
    "package_contract",
    "plain",
    "readme_text",
    "validate_contract",
    "write_package",
]

WEIGHTS = "model.safetensors"


def plain(value: Any) -> Any:
    """``value`` with tuples turned into lists, recursively (YAML- and JSON-friendly)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _tile(shape: Sequence[int]) -> int | list[int]:
    return int(shape[0]) if len(set(shape)) == 1 else [int(s) for s in shape]


def _uses_nifti(config: TrainConfig) -> bool:
    return any(d is not None and d.nifti for d in (config.data, config.validation, config.test))


def package_contract(config: TrainConfig, normalization: Normalization, description: str,
                     target: VolumeTarget | None = None) -> dict[str, Any]:
    """The ``model.yaml`` content of the trained model, as plain data (keys in file order).

    A 3D model records the model grid it was trained on: ``target`` (the spacing and orientation
    NIfTI pairs were resampled to), else ``model.spacing``/``model.orientation`` when given, so
    that inference resamples every volume to it. Trained on NIfTI, it takes ``scaled`` values
    (nibabel's ``get_fdata``, as its chips were read); else the stored values (``raw``).
    """
    model = config.model
    spacing = list(target.spacing) if target is not None else model.spacing
    orientation = target.orientation if target is not None else model.orientation
    norm: dict[str, Any] = {"mode": normalization.mode}
    if normalization.mode == "meanstd":
        norm.update(mean=normalization.mean, std=normalization.std)
    elif normalization.mode == "scale":
        norm.update(scale=normalization.scale, offset=normalization.offset)
    raw: dict[str, Any] = {
        "name": model.name,
        "version": model.version,
        "description": description,
        "license": model.license,
        "spatial_dims": model.spatial_dims,
        "architecture": {"name": model.architecture.name, "args": model.architecture.args},
        "weights": WEIGHTS,
        "input": {
            "bands": [{"name": b.name, "index": b.index} if b.index else {"name": b.name} for b in model.bands],
            "normalization": norm,
            # rasters' chips are read as stored values, without their scale/offset; NIfTI chips scaled
            "values": "scaled" if _uses_nifti(config) else "raw",
        },
        "tile": _tile(model.tile_shape),
        "overlap": model.overlap,
        "output": _output(config),
        "classes": [c.model_dump(exclude_none=True) for c in model.classes],
        "pixel_size": model.pixel_size,
        "spacing": spacing,
        "orientation": orientation,
    }
    return plain({k: v for k, v in raw.items() if v is not None})


def _output(config: TrainConfig) -> dict[str, Any]:
    """``output`` of model.yaml: the configured activation; a multi-label model's thresholds written out."""
    output = config.model.output
    written: dict[str, Any] = {"activation": output.activation}
    if output.multilabel:
        given = output.thresholds
        thresholds = list(given) if given is not None else [0.5] * len(config.model.classes)
        written.update(multilabel=True, thresholds=thresholds)
    return written


def validate_contract(contract: Mapping[str, Any]) -> ModelSpec:
    """``contract`` validated as a :class:`~segflow.models.package.ModelSpec`.

    Raises
    ------
    ConfigError
        If the contract does not validate (the message names the field).
    """
    try:
        return ModelSpec.model_validate(dict(contract))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"the trained model's model.yaml would be invalid at {where}: {first['msg']}; "
                          "fix the model section of the training config") from None


def _check_target(target: Path) -> None:
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / "model.yaml").exists())):
        raise OutputError(
            f"refusing to replace {target}: it exists and is not a model package directory (no model.yaml); "
            "choose another 'package' path or remove it"
        )


def write_package(directory: str | os.PathLike[str], contract: Mapping[str, Any],
                  state: Mapping[str, torch.Tensor], readme: str) -> Path:
    """Write (or replace) the package directory atomically and return its path.

    ``contract`` is the ``model.yaml`` content (see :func:`package_contract`); it is validated,
    and the weights are checked to load strictly into the network it describes, before the
    directory is renamed into place.
    """
    target = Path(directory)
    spec = validate_contract(contract)
    _check_target(target)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write model package {target}: {exc.strerror or exc}; check the path and "
                          "free space") from None
    with atomic_path(target, hint="check the path and free space") as staging:
        staging.mkdir()
        (staging / WEIGHTS).write_bytes(safetensors_bytes(tensors, {"format": "pt", "model": spec.name}))
        text = yaml.safe_dump(plain(dict(contract)), sort_keys=False, width=100, allow_unicode=True,
                              default_flow_style=None)
        (staging / "model.yaml").write_text(text, encoding="utf-8")
        (staging / "README.md").write_text(readme, encoding="utf-8")
        for item in staging.iterdir():
            item.chmod(0o644)
        ModelSpec.model_validate(yaml.safe_load((staging / "model.yaml").read_text(encoding="utf-8")))
        build_network(spec, load_file(str(staging / WEIGHTS)), weights_name=WEIGHTS)
    return target


# --------------------------------------------------------------------------- README


def _fmt(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.4f}"


def metrics_table(metrics: Metrics, kinds: Sequence[str]) -> str:
    """Markdown table: one row per class with IoU, Dice and (for things) object F1."""
    rows = ["| class | kind | IoU | Dice | object F1 (IoU ≥ 0.5) |", "| --- | --- | --- | --- | --- |"]
    for name, kind, iou, dice in zip(metrics.class_names, kinds, metrics.iou, metrics.dice, strict=True):
        f1 = _fmt(metrics.object_f1[name]) if name in metrics.object_f1 else ""
        rows.append(f"| {name} | {kind} | {_fmt(iou)} | {_fmt(dice)} | {f1} |")
    rows.append(f"| **mean IoU** | | **{_fmt(metrics.mean_iou)}** | | |")
    rows.append(f"| pixel accuracy | | {_fmt(metrics.pixel_accuracy)} | | |")
    return "\n".join(rows)


def _output_text(spec: ModelSpec) -> str:
    if spec.multilabel:
        return (f"sigmoid, multi-label ({spec.output_channels} channels; class k present where its probability >= "
                f"thresholds {list(spec.thresholds or ())}; classes may overlap)")
    if spec.output.activation == "sigmoid":
        return "sigmoid, binary (1 channel: the probability of class 1)"
    return spec.output.activation


def readme_text(spec: ModelSpec, sections: Mapping[str, str]) -> str:
    """The package README: contract, then the given sections (training data, training, quality...)."""
    bands = ", ".join(f"{b.name} (band {b.index})" if b.index else b.name for b in spec.input.bands)
    norm = spec.input.normalization
    norm_text: str = norm.mode
    if norm.mode == "meanstd" and norm.mean is not None and norm.std is not None:
        norm_text += f" (mean {[round(m, 2) for m in norm.mean]}, std {[round(s, 2) for s in norm.std]})"
    elif norm.mode == "scale":
        norm_text += f" (x * {norm.scale} + {norm.offset})"
    classes = "\n".join(
        f"| {i} | {c.name} | {c.kind} | {list(c.color) if c.color else ''} |" for i, c in enumerate(spec.classes)
    )
    parts = [
        f"# {spec.name} {spec.version}",
        "",
        spec.description,
        "",
        "## Contract",
        "",
        f"- spatial dims: {spec.spatial_dims} ({'Y, X' if spec.spatial_dims == 2 else 'Z, Y, X'})",
        f"- architecture: `{spec.architecture.name if spec.architecture else '?'}` "
        f"{plain(spec.architecture.args) if spec.architecture else ''}",
        f"- input bands: {bands}",
        f"- normalization: {norm_text}",
        f"- tile {spec.tile_shape}, overlap {spec.overlap}, output {_output_text(spec)}",
        *([f"- model grid: voxel spacing (dz, dy, dx) {list(spec.spacing) if spec.spacing else 'as the input'} mm, "
           f"orientation {spec.orientation or 'as the input'} (inputs are resampled to it)"]
          if spec.spacing is not None or spec.orientation is not None else []),
        f"- weights: `{spec.weights}` (safetensors state dict)",
        f"- license: {spec.license or 'not stated'}",
        "",
        "| value | class | kind | color |",
        "| --- | --- | --- | --- |",
        classes,
    ]
    for title, body in sections.items():
        parts += ["", f"## {title}", "", body.rstrip()]
    return "\n".join(parts) + "\n"
