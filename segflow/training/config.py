"""The configuration of ``segflow train``: a YAML file (or CLI flags) validated at the edge.

Every problem is reported as one :class:`~segflow.errors.ConfigError` line naming the field,
what was expected and how to fix it. Relative paths are taken from the current directory.

A complete example (every key but ``model.name``, ``model.bands``, ``model.classes`` and one
data source has a default)::

    model:
      name: my-unet                       # package name
      version: "1.0"
      description: what it segments       # measured metrics are appended
      license: Apache-2.0
      spatial_dims: 2                     # 2 (Y, X) or 3 (Z, Y, X)
      architecture: {name: unet, args: {channels: [16, 32, 64, 128]}}
      encoder_weights: null               # torchvision ImageNet weights for args.encoder (resnet34, ...):
                                          # a state-dict file (segflow.models.arch.encoder_weights)
      bands:                              # model inputs, in order; index = 1-based band in the image
        - {name: red, index: 3}
        - {name: nir, index: 4}
      normalization: {mode: meanstd}      # mean/std computed from training chips when not given
      chip: 128                           # training chip size (one int or one per spatial axis)
      tile: 256                           # inference window written to model.yaml (default: chip)
      overlap: 0.25
      classes:
        - {name: background, kind: stuff, color: [0, 0, 0]}
        - {name: building, kind: thing, color: [220, 60, 60]}
      output: {activation: softmax}       # or sigmoid (2 classes, 1 channel), or sigmoid with multilabel: true,
                                          # thresholds: [...] (classes may overlap; see output_config)
      spacing: null                       # 3D: model-grid voxel (dz, dy, dx) mm; default: median of data.nifti
      orientation: null                   # 3D: axis codes of voxel x, y, z; default RAS with data.nifti
    data:                                 # any mix of the kinds of source (2D: pairs, vectors, scenes;
      pairs: [{image: a.tif, labels: a_labels.tif}]            # 3D: nifti, volumes)
      vectors: [{image: b.tif, labels: b.geojson, property: class}]
      nifti: [{image: "imagesTr/*_0000.nii.gz", labels: "labelsTr/*.nii.gz"}]  # or plain paths
      synthetic: {kind: scenes, count: 4, size: 2048, seed: 0}
    validation: {fraction: 0.1, chips: 64}  # or pairs / vectors / synthetic of its own
    test: {synthetic: {kind: scenes, count: 1, size: 2048, seed: 900}}  # optional, sliding window
    augment: {flips: true, rot90: true, gain: 0.1, offset: 0.1, noise: 0.03}
    sampling: {foreground: 0.33}          # fraction of chips centred on a pixel/voxel of a class > 0
                                          # (default 0.33 in 3D, 0 in 2D)
    loss: ce                              # segflow.training.losses.build_loss spec: name or {name: ..., options};
                                          # it must fit model.output (losses_for): ce, ce+jaccard, ... or bce, ...
    class_weights: [1.0, 2.0]             # optional per-class pixel weights, for any loss (not multi-label),
                                          # or balanced (median frequency over sampled training chips)
    border_weights: {w0: 10, sigma: 5}    # optional U-Net border weights from instances (pairs' `instances`,
                                          # vector polygons, synthetic buildings)
    optimizer: {lr: 0.001, weight_decay: 0.0001, schedule: cosine, clip_grad_norm: null}  # or poly, constant
    init: null                            # a model package to fine-tune from (built-in name or path)
    early_stopping: null                  # e.g. {patience: 10, min_delta: 0.001} on validation mean IoU
    checkpoint_every_steps: null          # also checkpoint every N steps inside an epoch (resumable)
    epochs: 10
    batch_size: 8
    chips_per_epoch: 512
    seed: 0
    device: auto                          # auto, cpu, cuda or cuda:N
    amp: true                             # mixed precision on CUDA (ignored on the CPU)
    output: out/train                     # checkpoint.pt, history.json; the package goes to package/
    package: null                         # where to write the model package (default: <output>/package)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from ..errors import ConfigError
from ..models.package import MAX_CLASSES, ArchitectureSpec, BandSpec, ClassSpec, Normalization, OutputSpec
from ..synthetic import BANDS as SCENE_BANDS
from .data_config import DataConfig, ValidationConfig, _Strict
from .instance_config import check_instance_training
from .output_config import BorderWeightsConfig, check_model_output, check_train_output
from .run_config import EarlyStoppingConfig, OptimizerConfig, SamplingConfig

__all__ = [
    "IGNORE_INDEX",
    "ArchitectureConfig",
    "AugmentConfig",
    "BandConfig",
    "EarlyStoppingConfig",
    "ModelConfig",
    "NormalizationConfig",
    "OptimizerConfig",
    "SamplingConfig",
    "TrainConfig",
    "format_validation_error",
    "load_train_config",
    "train_config_from_dict",
]

IGNORE_INDEX = 255


def _spatial(value: int | list[int], dims: int, what: str) -> tuple[int, ...]:
    shape = (value,) * dims if isinstance(value, int) else tuple(value)
    if len(shape) != dims or any(s < 1 for s in shape):
        raise ValueError(f"{what} {value!r} must be one positive int or {dims} positive ints (one per spatial axis)")
    return shape


class BandConfig(BandSpec):
    """One model input: its role name and its 1-based band number in the training images.

    The package's :class:`~segflow.models.package.BandSpec`; training reads every band from the
    one image of each pair, so ``source`` is always ``image``: the config does not take the key,
    and dumps leave it out (the resolved configuration and the checkpoint's fingerprint list name
    and index only).
    """

    source: Literal["image"] = Field(default="image", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _no_source(cls, data: Any) -> Any:
        if isinstance(data, dict) and "source" in data:
            raise ValueError("training reads every band from the one image of each pair: remove 'source'")
        return data


class NormalizationConfig(Normalization):
    """``meanstd`` (mean/std computed from training chips when omitted), ``scale``,
    ``ct_window`` (``center`` and ``width`` in HU) or ``none``.

    The package's :class:`~segflow.models.package.Normalization` with the training defaults:
    ``meanstd`` by default, and its mean and std may be left out (they are then computed from
    training chips), so this check replaces the package's.
    """

    mode: Literal["meanstd", "scale", "ct_window", "none"] = "meanstd"

    @model_validator(mode="after")
    def _check(self) -> NormalizationConfig:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither (then they are computed from training chips)")
        if self.mode == "ct_window" and (self.center is None or self.width is None or self.width <= 0):
            raise ValueError("mode ct_window needs 'center' and a positive 'width' in HU, e.g. center: 40, width: 400")
        if self.std is not None and any(not s > 0 for s in self.std):
            raise ValueError(f"std values must be > 0, got {self.std}")
        return self


class ArchitectureConfig(ArchitectureSpec):
    """An architecture of :func:`segflow.models.arch.build_architecture` and its options.

    The package's :class:`~segflow.models.package.ArchitectureSpec`, named ``unet`` by default.
    """

    name: str = "unet"


class ModelConfig(_Strict):
    """The model to train and the contract written to its ``model.yaml``."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = "0.1"
    description: str = ""
    license: str | None = None
    spatial_dims: Literal[2, 3] = 2
    architecture: ArchitectureConfig = ArchitectureConfig()
    encoder_weights: Path | None = None  # torchvision weights for architecture.args.encoder (new runs start there)
    bands: list[BandConfig] = Field(min_length=1)
    normalization: NormalizationConfig = NormalizationConfig()
    chip: int | list[int] = 128
    tile: int | list[int] | None = None
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0)
    classes: list[ClassSpec] = Field(min_length=2, max_length=MAX_CLASSES)
    output: OutputSpec = OutputSpec()  # softmax, binary sigmoid or multi-label sigmoid (see output_config)
    pixel_size: list[float] | None = None
    spacing: list[float] | None = None
    orientation: str | None = None

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        _spatial(self.chip, self.spatial_dims, "chip")
        _check_model_grid(self)
        check_model_output(self)
        if self.tile is not None:
            _spatial(self.tile, self.spatial_dims, "tile")
        names = [b.name.lower() for b in self.bands]
        if len(set(names)) != len(names):
            raise ValueError(f"band names must be unique, got {names}")
        classes = [c.name for c in self.classes]
        if len(set(classes)) != len(classes):
            raise ValueError(f"class names must be unique, got {classes}")
        mean = self.normalization.mean
        if mean is not None and len(mean) != len(self.bands):
            raise ValueError(f"normalization has {len(mean)} mean values for {len(self.bands)} bands")
        return self

    @property
    def chip_shape(self) -> tuple[int, ...]:
        """Training chip size, one value per spatial axis."""
        return _spatial(self.chip, self.spatial_dims, "chip")

    @property
    def tile_shape(self) -> tuple[int, ...]:
        """Inference window size, one value per spatial axis (the chip size when not given)."""
        return self.chip_shape if self.tile is None else _spatial(self.tile, self.spatial_dims, "tile")

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)


def _check_model_grid(model: ModelConfig) -> None:
    """``spacing`` (dz, dy, dx) mm and ``orientation`` (axis codes of voxel x, y, z) are 3D-only and well formed."""
    if model.spatial_dims != 3 and (model.spacing is not None or model.orientation is not None):
        raise ValueError("spacing and orientation are for volumes (spatial_dims 3); remove them")
    if model.spacing is not None and (len(model.spacing) != 3 or not all(math.isfinite(s) and s > 0
                                                                          for s in model.spacing)):
        raise ValueError(f"spacing must be 3 positive voxel sizes (dz, dy, dx) in mm, got {model.spacing}")
    code = model.orientation
    if code is not None and sorted(_AXIS_OF.get(c, "?") for c in code) != ["LR", "PA", "SI"]:
        raise ValueError(f"orientation must be 3 letters, one of R/L, A/P and S/I each, giving the world direction "
                         f"of voxel +x, +y, +z (e.g. RAS, LPS), got {code!r}")


_AXIS_OF = {"R": "LR", "L": "LR", "A": "PA", "P": "PA", "S": "SI", "I": "SI"}


class AugmentConfig(_Strict):
    """Training augmentations (see :mod:`segflow.training.augment`)."""

    flips: bool = True
    rot90: bool = True
    gain: float = Field(default=0.1, ge=0.0, lt=1.0)
    offset: float = Field(default=0.1, ge=0.0, lt=10.0)
    noise: float = Field(default=0.03, ge=0.0, lt=10.0)


class TrainConfig(_Strict):
    """Everything ``segflow train`` needs; see the module docstring for the YAML layout."""

    model: ModelConfig
    data: DataConfig
    validation: ValidationConfig = ValidationConfig()
    test: DataConfig | None = None
    augment: AugmentConfig = AugmentConfig()
    sampling: SamplingConfig = SamplingConfig()
    loss: str | dict[str, Any] = "ce"
    class_weights: list[float] | Literal["balanced"] | None = None
    border_weights: BorderWeightsConfig | None = None  # U-Net border weights from instances
    optimizer: OptimizerConfig = OptimizerConfig()
    init: str | None = None  # a model package to fine-tune from (segflow.training.finetune)
    early_stopping: EarlyStoppingConfig | None = None
    checkpoint_every_steps: int | None = Field(default=None, ge=1)
    epochs: int = Field(default=10, ge=1, le=100_000)
    batch_size: int = Field(default=8, ge=1, le=4096)
    chips_per_epoch: int = Field(default=512, ge=1, le=10_000_000)
    seed: int = Field(default=0, ge=0)
    device: str = "auto"
    amp: bool = True
    output: Path = Path("out/train")
    package: Path | None = None
    export: Literal["best", "last"] = "best"
    resume: bool = False

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.data.empty:
            raise ValueError("data has no source: give pairs, vectors, nifti or synthetic")
        _check_sources(self.data, self.model, "data")
        _check_sources(self.validation, self.model, "validation")
        if self.test is not None:
            _check_sources(self.test, self.model, "test")
        if self.model.spacing is None and not self.data.nifti and (
                self.validation.nifti or (self.test is not None and self.test.nifti)):
            raise ValueError("NIfTI validation/test data needs model.spacing when the training data has no NIfTI "
                             "pairs to take the median spacing from; give model.spacing: [dz, dy, dx] in mm")
        if self.validation.empty and self.validation.fraction == 0:
            raise ValueError("validation needs a fraction > 0 or sources of its own (pairs, vectors, synthetic)")
        if isinstance(self.class_weights, list):
            n = len(self.model.classes)
            if len(self.class_weights) != n or any(not (w >= 0 and math.isfinite(w)) for w in self.class_weights):
                raise ValueError(
                    f"class_weights needs {n} finite weights >= 0, one per class; got {self.class_weights}"
                )
        if self.chips_per_epoch < self.batch_size:
            raise ValueError(f"chips_per_epoch ({self.chips_per_epoch}) must be >= batch_size ({self.batch_size})")
        check_train_output(self)
        check_instance_training(self)
        if self.init is not None and self.model.encoder_weights is not None:
            raise ValueError("give init (a whole package to fine-tune from) or model.encoder_weights (an ImageNet "
                             "encoder), not both: init replaces every weight")
        return self

    @property
    def package_dir(self) -> Path:
        """Where the model package is written."""
        return self.package if self.package is not None else self.output / "package"


def _check_sources(data: DataConfig, model: ModelConfig, where: str) -> None:
    dims = model.spatial_dims
    if dims == 3 and (data.pairs or data.vectors):
        raise ValueError(f"{where}: raster pairs and vector labels are 2D; a 3D model trains on NIfTI pairs "
                         "(nifti) or synthetic volumes")
    if dims == 2 and data.nifti:
        raise ValueError(f"{where}.nifti: NIfTI pairs are volumes; set model.spatial_dims: 3 to train on them")
    if data.synthetic is None:
        return
    kind = data.synthetic.kind
    if (kind == "scenes") != (dims == 2):
        raise ValueError(f"{where}.synthetic.kind {kind!r} does not fit spatial_dims {dims}: use "
                         f"{'scenes' if dims == 2 else 'volumes'}")
    size = data.synthetic.size
    if isinstance(size, list) and len(size) != dims:
        raise ValueError(f"{where}.synthetic.size {size} needs 1 or {dims} values for {dims}D")
    if kind == "scenes":
        unknown = [b.name for b in model.bands if b.name.lower() not in SCENE_BANDS]
        if unknown:
            raise ValueError(
                f"synthetic scenes have bands {list(SCENE_BANDS)}; model bands {unknown} are not among them"
            )
    elif len(model.bands) != 1:
        raise ValueError(
            f"synthetic volumes have 1 channel (CT intensity); the model declares {len(model.bands)} bands"
        )


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line naming up to three bad fields of a pydantic error, prefixed by ``source``."""
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if isinstance(value, dict) or err["type"] == "missing" else f" (got {value!r:.60})"
        parts.append(f"{where}: {message}{shown}")
    more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return f"{source} is invalid: " + "; ".join(parts) + more + "; fix these fields"


def train_config_from_dict(raw: object, *, source: str = "train config") -> TrainConfig:
    """Validate a mapping (e.g. parsed YAML) into a :class:`TrainConfig`.

    Raises
    ------
    ConfigError
        One line naming the bad fields, what was expected and how to fix them.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a mapping with keys model, data, ...; got {type(raw).__name__}")
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate a training config YAML file.

    Raises
    ------
    ConfigError
        If the file is missing, not YAML, or its content is invalid.
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read training config {p}: {exc.strerror or exc}; check the path") from None
    except UnicodeDecodeError:
        raise ConfigError(f"training config {p} is not UTF-8 text; save it as UTF-8 YAML") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"training config {p} is not valid YAML{where}; fix the syntax") from None
    return train_config_from_dict(raw, source=str(p))

