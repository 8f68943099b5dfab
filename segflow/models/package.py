"""Model packages: a directory with ``model.yaml`` (the model's contract) and its weights.

``model.yaml`` declares what the model needs and gives::

    name: my-unet                 # required
    version: "1.0"
    description: free text
    license: Apache-2.0
    spatial_dims: 2               # 2 (Y, X) or 3 (Z, Y, X)
    architecture: {name: unet, args: {...}}   # for weights that hold only parameters
    weights: model.safetensors    # file in the package: .safetensors / .pt / .pth (parameters for
                                  # `architecture`), .ts (TorchScript) or .onnx (ONNX), see formats.py
    input:
      bands:                      # model input channels, in order
        - {name: green, index: 2} # name = role; index = default 1-based band in the scene
      normalization: {mode: meanstd, mean: [...], std: [...]}   # or scale / none
      values: scaled              # scaled (default): the raster's per-band scale/offset applied
                                  # (stored * scale + offset, e.g. reflectance from DN), then
                                  # normalization; raw: the stored numbers as they are
      expects:                    # optional: refuse inputs that are evidently something else
        modality: [CT]            # DICOM modalities taken (checked where the reader records one)
        unit: HU                  # unit of the numbers below, named in messages
        range: [-1024, 3071]      # what a measurement reads; values below are fill (left out)
        p1_at_most: -100          # the 1st percentile of the values must be <= this
                                  # (see segflow.models.expects for the exact rule)
    tile: 512                     # window size, one int or one per spatial axis
    fixed_tile: false             # true: the network takes windows of exactly `tile` (a dense head, a
                                  # static-shape export); false: any size, so a scene smaller than the
                                  # tile is evaluated as one window of the scene's size
    overlap: 0.25                 # default fractional overlap of windows
    output: {activation: softmax} # softmax | sigmoid (1 channel -> 2 classes) | none (already probabilities)
                                  # multi-label (classes that overlap): {activation: sigmoid, multilabel: true,
                                  # thresholds: [0.5, 0.4, ...]}: K channels, each an independent sigmoid (or,
                                  # with none, already a probability); class k present where its blended
                                  # probability >= thresholds[k] (default 0.5 each), see OutputSpec
    classes:
      - {name: background, kind: stuff, color: [0, 0, 0]}
      - {name: building, kind: thing}
    spacing: [4.0, 4.0, 4.0]      # 3D only, optional: voxel spacing (dz, dy, dx) in mm it was trained at
    orientation: RAS              # 3D only, optional: world direction of voxel +x, +y, +z (arrays are
                                  # (z, y, x)); one of R/L, A/P, S/I each, nibabel's aff2axcodes letters
    precisions: [fp32, bf16]      # optional: precisions the model was validated for (default: fp32 only);
                                  # --precision auto picks the fastest the device supports (segflow.precision)

A package is found by built-in name, by directory (or its ``model.yaml``), or as a single
archive of the directory (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``), unpacked safely into a
cache (see :mod:`segflow.models.archive`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ModelError
from ..labels import MAX_CLASSES
from .archive import extract_package_archive, is_archive, sha256_file
from .inputs import BandSpec, ExpectsSpec, Normalization
from .output import OutputSpec

__all__ = [
    "BandSpec",
    "ClassSpec",
    "ExpectsSpec",
    "ModelPackage",
    "ModelSpec",
    "Normalization",
    "OutputSpec",
    "builtin_names",
    "resolve_package",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """The model's input channels, their normalisation, and which values it takes.

    ``values``: ``scaled`` (default) feeds each band as GDAL's physical value, ``stored *
    scale + offset`` with the raster's per-band scale/offset tags (float32; unchanged where a
    raster declares none); ``raw`` feeds the stored numbers (e.g. DN) whatever the tags say.
    Normalisation applies after this. ``expects`` (optional) describes those values, so that an
    input that evidently is something else is refused (see :class:`ExpectsSpec`).
    """

    bands: list[BandSpec] = Field(min_length=1)
    normalization: Normalization = Normalization()

    @field_validator("normalization", mode="before")
    @classmethod
    def _mode_alone(cls, value: Any) -> Any:
        """``normalization: none`` (a mode alone) means ``{mode: none}``; a mode that needs values says which."""
        return {"mode": value} if isinstance(value, str) else value
    values: Literal["scaled", "raw"] = "scaled"
    expects: ExpectsSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        names = [b.name.lower() for b in self.bands]
        if len(set(names)) != len(names):
            raise ValueError(f"input band names must be unique, got {names}")
        n = self.normalization
        if n.mode == "meanstd" and n.mean is not None and len(n.mean) != len(self.bands):
            raise ValueError(f"normalization has {len(n.mean)} mean values for {len(self.bands)} input bands")
        return self


class ClassSpec(_Strict):
    name: str = Field(min_length=1)
    kind: Literal["stuff", "thing"] = "stuff"
    color: tuple[int, int, int] | None = None

    @field_validator("color")
    @classmethod
    def _color(cls, v: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if v is not None and any(not 0 <= c <= 255 for c in v):
            raise ValueError(f"color components must be 0..255, got {v}")
        return v


class ArchitectureSpec(_Strict):
    name: str = Field(min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)


def _check_volume_contract(spec: ModelSpec) -> None:
    """``spacing`` (dz, dy, dx) mm and ``orientation`` (see :class:`ModelSpec`) are for 3D models and well formed."""
    if spec.spatial_dims != 3 and (spec.spacing is not None or spec.orientation is not None):
        raise ValueError("spacing and orientation are for volumes (spatial_dims 3); remove them")
    if spec.spacing is not None and not all(math.isfinite(s) and s > 0 for s in spec.spacing):
        raise ValueError(f"spacing must be 3 positive voxel sizes (dz, dy, dx) in mm, got {list(spec.spacing)}")
    code = spec.orientation
    if code is not None and (len(code) != 3 or sorted(_AXIS_OF.get(c, "?") for c in code) != ["LR", "PA", "SI"]):
        raise ValueError(f"orientation must be 3 letters, one of R/L, one of A/P and one of S/I, giving the world "
                         f"direction of voxel +x, +y, +z (e.g. RAS, LPS), got {code!r}")


def _check_instance_contract(spec: ModelSpec) -> None:
    """An instance output (``activation: instances``) is Mask R-CNN's: 2D, parameters, class 0 the background."""
    maskrcnn = spec.architecture is not None and spec.architecture.name.strip().lower() == "maskrcnn"
    if spec.output.activation == "instances" and not maskrcnn:
        raise ValueError("activation instances is the output of an instance-segmentation network; declare "
                         "architecture: {name: maskrcnn}")
    if not maskrcnn:
        return
    if spec.output.activation != "instances":
        raise ValueError("architecture maskrcnn finds objects, not per-pixel classes: declare output: {activation: "
                         "instances} (and optionally score_threshold)")
    if spec.spatial_dims != 2:
        raise ValueError("architecture maskrcnn is 2D: set spatial_dims: 2")
    if spec.weights is not None and Path(spec.weights).suffix.lower() not in (".safetensors", ".pt", ".pth"):
        raise ValueError(f"architecture maskrcnn needs its parameters (.safetensors, .pt or .pth), not "
                         f"{spec.weights!r}: its detections have data-dependent shapes, so it is not exported")
    things = [c.name for c in spec.classes[1:] if c.kind != "thing"]
    if spec.classes[0].kind != "stuff" or things:
        raise ValueError("architecture maskrcnn: class 0 is the background (kind stuff) and every other class an "
                         f"object class (kind thing); fix the kinds of {[spec.classes[0].name, *things]}")


_AXIS_OF = {"R": "LR", "L": "LR", "A": "PA", "P": "PA", "S": "SI", "I": "SI"}


class ModelSpec(_Strict):
    """The contract of a model, as declared in ``model.yaml``.

    For volumes, ``spacing`` is the voxel size ``(dz, dy, dx)`` in mm the model was made for and
    ``orientation`` the world direction toward which voxel x, y and z grow (arrays are ``(z, y,
    x)``), three letters in nibabel's ``aff2axcodes`` convention over ``(x, y, z)``: ``RAS`` (x grows
    toward the patient's Right, y toward Anterior, z toward Superior) is nibabel's canonical
    orientation, ``LPS`` that of a DICOM axial series. Both optional; when given, every input
    volume is seen on that grid for inference and its labels brought back onto the input's grid
    (:mod:`segflow.resample`).
    """

    name: str = Field(min_length=1)
    version: str = "0"
    description: str = ""
    license: str | None = None
    spatial_dims: Literal[2, 3]
    architecture: ArchitectureSpec | None = None
    weights: str | None = None
    input: InputSpec
    tile: int | list[int]
    fixed_tile: bool = False
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0)
    output: OutputSpec = OutputSpec()
    classes: list[ClassSpec] = Field(min_length=2, max_length=MAX_CLASSES)
    pixel_size: list[float] | None = None
    spacing: tuple[float, float, float] | None = None
    orientation: str | None = None
    precisions: list[Literal["fp32", "bf16", "fp16"]] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        tile = self.tile_shape
        if any(t < 1 for t in tile):
            raise ValueError(f"tile must be positive, got {self.tile}")
        if len(tile) != self.spatial_dims:
            raise ValueError(f"tile {self.tile} has {len(tile)} values for spatial_dims {self.spatial_dims}")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be unique, got {names}")
        if self.precisions is not None and len(set(self.precisions)) != len(self.precisions):
            raise ValueError(f"precisions must name each of fp32, bf16, fp16 at most once, got {self.precisions}")
        if self.output.activation == "sigmoid" and not self.output.multilabel and len(self.classes) != 2:
            raise ValueError("activation sigmoid is for binary models: declare exactly 2 classes (or multilabel: "
                             "true for classes that may overlap, one channel each)")
        thresholds = self.output.thresholds
        if thresholds is not None and len(thresholds) != len(self.classes):
            raise ValueError(f"output.thresholds has {len(thresholds)} values for {len(self.classes)} classes; give "
                             "one per class, in the order of classes")
        if self.weights is None and self.architecture is None:
            raise ValueError("declare 'weights' (a file in the package) or an 'architecture' (or both)")
        _check_volume_contract(self)
        _check_instance_contract(self)
        return self

    @property
    def tile_shape(self) -> tuple[int, ...]:
        if isinstance(self.tile, int):
            return (self.tile,) * self.spatial_dims
        return tuple(self.tile)

    @property
    def sources(self) -> tuple[str, ...]:
        """Names of the rasters the model reads, in order of first use (``image`` by default)."""
        return tuple(dict.fromkeys(b.source for b in self.input.bands))

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def output_channels(self) -> int:
        """Channels the network returns: 1 for a binary sigmoid model, else one per class."""
        return 1 if self.output.activation == "sigmoid" and not self.output.multilabel else len(self.classes)

    @property
    def instances(self) -> bool:
        """Whether the network finds objects (``activation: instances``, Mask R-CNN) rather than classifying pixels."""
        return self.output.activation == "instances"

    @property
    def multilabel(self) -> bool:
        """Whether the classes may overlap (``output.multilabel``): labels are per-class thresholds."""
        return self.output.multilabel

    @property
    def thresholds(self) -> tuple[float, ...] | None:
        """Per-class probability thresholds of a multi-label model (default 0.5 each); None otherwise."""
        if not self.output.multilabel:
            return None
        given = self.output.thresholds
        return tuple(float(t) for t in given) if given is not None else (0.5,) * len(self.classes)


@dataclass(frozen=True)
class ModelPackage:
    """A resolved model package: its contract, where it lives, and digests for provenance.

    ``archive`` / ``archive_sha256`` are set when the package came from an archive file; ``root``
    is then the unpacked folder in the cache.
    """

    spec: ModelSpec
    root: Path
    builtin: bool
    yaml_sha256: str
    weights_sha256: str | None
    archive: Path | None = None
    archive_sha256: str | None = None

    @property
    def weights_path(self) -> Path | None:
        return None if self.spec.weights is None else self.root / self.spec.weights

    @property
    def source(self) -> str:
        if self.builtin:
            return f"builtin:{self.spec.name}"
        return str(self.archive) if self.archive is not None else str(self.root)

    def provenance(self) -> dict[str, Any]:
        """What a run record should say about the model (names, source and digests)."""
        record: dict[str, Any] = {
            "name": self.spec.name, "version": self.spec.version, "source": self.source,
            "weights_sha256": self.weights_sha256, "model_yaml_sha256": self.yaml_sha256,
            "classes": list(self.spec.class_names),
        }
        if self.archive is not None:
            record["archive_sha256"] = self.archive_sha256
        return record


def _builtin_root() -> Path:
    return Path(str(resources.files("segflow.models") / "builtin"))


def builtin_names() -> list[str]:
    """Names of the models that ship with segflow."""
    root = _builtin_root()
    return sorted(p.name for p in root.iterdir() if (p / "model.yaml").is_file())


def _sha256(path: Path) -> str:
    return sha256_file(path)


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return "; ".join(parts) + more


def load_spec(yaml_path: Path) -> ModelSpec:
    """Parse and validate one ``model.yaml``."""
    try:
        raw = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read {yaml_path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ModelError(f"{yaml_path} is not valid YAML{where}; fix the syntax") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{yaml_path} must hold a mapping of fields (name, spatial_dims, input, ...)")
    try:
        return ModelSpec.model_validate(raw)
    except ValidationError as exc:
        raise ModelError(f"{yaml_path} is invalid: {_format_validation(exc)}") from None


def _weights_file(spec: ModelSpec, root: Path) -> Path:
    """The declared weights file, which must lie inside the package."""
    assert spec.weights is not None
    rel = Path(spec.weights)
    if rel.is_absolute() or ".." in rel.parts:
        raise ModelError(
            f"model {spec.name!r} declares weights {spec.weights!r} outside its package; "
            "give a file name relative to the folder of model.yaml, e.g. weights: model.safetensors"
        )
    weights = root / rel
    if not weights.is_file():
        raise ModelError(f"model {spec.name!r} declares weights {spec.weights!r} but {weights} does not exist")
    return weights


def resolve_package(name_or_path: str | Path) -> ModelPackage:
    """Find a model package by built-in name or by path.

    Parameters
    ----------
    name_or_path : str or Path
        A built-in name (see :func:`builtin_names`), a package directory, its ``model.yaml``, or an
        archive of the directory (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``).

    Returns
    -------
    ModelPackage
        The validated contract, its folder and the SHA-256 digests of ``model.yaml``, the weights
        and (for archives) the archive file.
    """
    path = Path(name_or_path)
    builtin = False
    archive: Path | None = None
    archive_sha: str | None = None
    if path.exists():
        if is_archive(path):
            archive, archive_sha = path.resolve(), sha256_file(path)
            root = extract_package_archive(path, archive_sha)
            yaml_path = root / "model.yaml"
        else:
            root = path.parent if path.is_file() else path
            yaml_path = path if path.is_file() else path / "model.yaml"
            if not yaml_path.is_file():
                raise ModelError(f"{path} is not a model package: it has no model.yaml")
    elif str(name_or_path) in builtin_names():
        root = _builtin_root() / str(name_or_path)
        yaml_path = root / "model.yaml"
        builtin = True
    else:
        raise ModelError(
            f"unknown model {str(name_or_path)!r}: not a built-in ({', '.join(builtin_names())}) "
            "and no model package directory or archive at that path"
        )
    spec = load_spec(yaml_path)
    weights_sha = None if spec.weights is None else _sha256(_weights_file(spec, root))
    return ModelPackage(spec=spec, root=root, builtin=builtin, yaml_sha256=_sha256(yaml_path),
                        weights_sha256=weights_sha, archive=archive, archive_sha256=archive_sha)
