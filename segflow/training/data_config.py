"""The data sections of the training config: where labelled chips come from.

``data``, ``validation`` and ``test`` of :class:`~segflow.training.config.TrainConfig` each list
raster pairs, vector labels, NIfTI pairs and/or synthetic data (see the YAML layout in
:mod:`segflow.training.config`); relative paths are taken from the current directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "DataConfig",
    "NiftiConfig",
    "PairConfig",
    "SyntheticConfig",
    "ValidationConfig",
    "VectorConfig",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)



class PairConfig(_Strict):
    """An image GeoTIFF and its ``uint8`` label raster on the same grid (255 = unlabelled).

    The label raster has one band of class indices, or for a multi-label model one 0/1 band per
    class (band k = class k). ``instances``: an optional raster of integer instance ids (0 = none)
    on the same grid, for ``border_weights``.
    """

    image: Path
    labels: Path
    instances: Path | None = None


class VectorConfig(_Strict):
    """An image GeoTIFF and GeoJSON polygons whose ``property`` holds a class name or index.

    ``crs``: the polygons' CRS (default: the file's ``crs`` member, else EPSG:4326 as GeoJSON
    says). ``class_map``: property value (as text) -> model class name, index, or ``ignore``
    (unlabelled), e.g. ``{residential: building}``. ``unknown_classes``: ``error`` (default; the
    unknown values are listed with their counts) or ``skip`` (such polygons are left out). See
    :mod:`segflow.training.vector_labels`.
    """

    image: Path
    labels: Path
    property: str = "class"
    crs: str | None = None
    all_touched: bool = False
    class_map: dict[str, int | str] | None = None
    unknown_classes: Literal["error", "skip"] = "error"

    @field_validator("class_map", mode="before")
    @classmethod
    def _text_keys(cls, v: object) -> object:
        return {str(k): t for k, t in v.items()} if isinstance(v, dict) else v


class NiftiConfig(_Strict):
    """A NIfTI image and its label volume on the same voxel grid (shape and affine); labels are
    integer class ids, 255 = unlabelled. ``image`` may be a pattern with one ``*`` (e.g.
    ``imagesTr/*_0000.nii.gz``); ``labels`` then has one ``*`` too, standing for the text the
    image's ``*`` matched (``labelsTr/*.nii.gz``). No other character is a wildcard."""

    image: str = Field(min_length=1)
    labels: str = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> NiftiConfig:
        if self.image.count("*") > 1 or self.labels.count("*") != self.image.count("*"):
            raise ValueError(f"image {self.image!r} and labels {self.labels!r} must both be paths, or both patterns "
                             "with one '*' (the labels' '*' stands for what the image's matched)")
        return self


class SyntheticConfig(_Strict):
    """Data generated in code: ``scenes`` (2D, :mod:`segflow.synthetic`) or ``volumes`` (3D,
    :mod:`segflow.synthetic.volume`); item ``k`` uses seed ``seed + k``."""

    kind: Literal["scenes", "volumes"]
    count: int = Field(default=1, ge=1, le=10_000)
    size: int | list[int] = 1024
    seed: int = Field(default=0, ge=0)

    @field_validator("size")
    @classmethod
    def _size(cls, v: int | list[int]) -> int | list[int]:
        values = [v] if isinstance(v, int) else v
        if not 1 <= len(values) <= 3 or any(s < 16 for s in values):
            raise ValueError(f"size {v!r} must be one int or one per spatial axis, each >= 16")
        return v


class DataConfig(_Strict):
    """Sources of labelled chips: raster pairs, vector labels, NIfTI pairs and/or synthetic data."""

    pairs: list[PairConfig] = Field(default_factory=list)
    vectors: list[VectorConfig] = Field(default_factory=list)
    nifti: list[NiftiConfig] = Field(default_factory=list)
    synthetic: SyntheticConfig | None = None

    @property
    def empty(self) -> bool:
        return not self.pairs and not self.vectors and not self.nifti and self.synthetic is None


class ValidationConfig(DataConfig):
    """Validation chips: held out from the training data (``fraction``) or separate sources."""

    fraction: float = Field(default=0.1, ge=0.0, le=0.5)
    chips: int = Field(default=64, ge=1, le=100_000)
