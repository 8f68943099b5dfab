"""Labelled training chips, read window by window from scenes and volumes of any size.

A :class:`ChipSource` is one labelled image: a GeoTIFF with a label raster, a GeoTIFF with
GeoJSON polygons (rasterised per chip on the image grid), a synthetic scene generated block by
block, a synthetic volume, or a NIfTI image/label pair seen on the model's voxel grid
(:mod:`segflow.training.nifti`). ``source.read(start, shape)`` returns a :class:`Chip`: image
``(C, *shape)`` float32, labels ``shape`` uint8 (:data:`IGNORE` = unlabelled) and validity
``shape`` bool, padded with ignored pixels where the window leaves the source. A raster is never
read whole: each chip is one windowed read. The 2D sources record where their classes are
(:class:`~segflow.training.locations.ScannedLocations`, one scan in blocks) for foreground
oversampling, when ``sampling.foreground`` asks for it. GeoTIFF windows are read by
:mod:`segflow.training.rasters`; a multi-label model's label planes and the instance ids of border
weights come from :mod:`segflow.training.label_planes`.

The base class :class:`~segflow.training.sources.ChipSource` and :class:`~segflow.training.sources.Chip`
are in :mod:`segflow.training.sources`; where chips are taken (the validation hold-out, the random
positions) in :mod:`segflow.training.sampling`.
Spatial axes are ``(Y, X)`` for rasters and ``(Z, Y, X)`` for volumes; channels come first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from rasterio.errors import RasterioError
from rasterio.features import rasterize
from rasterio.transform import Affine
from rasterio.windows import Window

from .. import synthetic
from ..errors import ConfigError, InputError
from ..synthetic import volume as synthetic_volume
from .config import ModelConfig
from .data_config import DataConfig
from .label_planes import (
    check_plane_names,
    check_plane_values,
    one_hot_planes,
    plane_values,
    rasterize_instances,
    rasterize_planes,
)
from .locations import ScannedLocations
from .nifti import VolumeTarget, nifti_sources
from .rasters import _check_same_grid, _ImageReader, _instance_raster, _open_meta
from .sources import IGNORE, Chip, ChipSource, Start
from .vector_labels import read_vector_labels

__all__ = [
    "RasterPairSource",
    "SyntheticSceneSource",
    "VectorSource",
    "VolumeSource",
    "build_sources",
]

def _class_table(source_names: Sequence[str], model_names: Sequence[str], what: str) -> npt.NDArray[np.uint8]:
    """Lookup table from source label values to model class indices (unknown names -> class 0)."""
    table = np.zeros(256, dtype=np.uint8)
    table[IGNORE] = IGNORE
    for value, name in enumerate(source_names):
        table[value] = model_names.index(name) if name in model_names else 0
    if not any(name in model_names for name in source_names[1:]) or model_names[0] not in source_names:
        raise ConfigError(
            f"model classes {list(model_names)} do not match the {what} classes {list(source_names)}: expected "
            f"the first class to be {source_names[0]!r} and some of the others named as in {list(source_names)}; "
            "rename the model classes"
        )
    return table


def _check_labels(labels: np.ndarray, num_classes: int, path: Path, start: Start) -> None:
    bad = (labels != IGNORE) & (labels >= num_classes)
    if bad.any():
        value = int(labels[bad][0])
        raise InputError(
            f"{path} holds label {value} near row {start[0]} col {start[1]}: expected class indices "
            f"0..{num_classes - 1} or {IGNORE} (unlabelled); fix the labels or declare more classes"
        )


class RasterPairSource(ScannedLocations, ChipSource):
    """A GeoTIFF image and a single-band ``uint8`` label raster on exactly the same grid.

    Label values are class indices; the label raster's nodata value and 255 mean unlabelled,
    and image nodata pixels are unlabelled too. With ``multilabel`` the label raster has one
    0/1 band per class (:mod:`~segflow.training.label_planes`); ``instances`` is an optional
    single-band raster of integer instance ids (0 = none) on the same grid.
    """

    def __init__(self, image: Path, labels: Path, bands: Sequence[tuple[str, int | None]], num_classes: int, *,
                 multilabel: bool = False, class_names: Sequence[str] = (), instances: Path | None = None):
        self.image = _ImageReader(Path(image), bands)
        self.labels_path = Path(labels)
        meta = _open_meta(self.labels_path, "label raster")
        _check_same_grid(self.image.meta, meta, self.image.path, self.labels_path)
        self.label_planes = num_classes if multilabel else 0
        self.instances_path = _instance_raster(self.image.meta, instances, self.image.path)
        self.has_instances = self.instances_path is not None
        if multilabel and (meta["count"] != num_classes or set(meta["dtypes"]) != {"uint8"}):
            raise InputError(
                f"label raster {self.labels_path} has {meta['count']} band(s) of {meta['dtypes'][0]}: a multi-label "
                f"model with {num_classes} classes needs {num_classes} uint8 bands, band k = class k (0/1, 255 = "
                "unlabelled)"
            )
        if multilabel:
            check_plane_names(meta["descriptions"], class_names, self.labels_path)
        elif meta["count"] != 1 or meta["dtypes"][0] != "uint8":
            raise InputError(
                f"label raster {self.labels_path} has {meta['count']} band(s) of {meta['dtypes'][0]}: expected one "
                "uint8 band of class indices (255 = unlabelled); convert it, e.g. gdal_translate -ot Byte -b 1"
            )
        self.label_nodata = meta["nodata"]
        self.num_classes = num_classes
        self.spatial_shape = (self.image.meta["height"], self.image.meta["width"])
        self.num_bands = len(self.image.bands)
        self.description = f"{self.image.path} with labels {self.labels_path}"

    def read_inside(self, start: Start, shape: tuple[int, ...]) -> Chip:
        image, valid = self.image.read(start, shape)
        window = Window(start[1], start[0], shape[1], shape[0])
        try:
            labels = self.image.handles.get(self.labels_path).read(window=window) if self.label_planes else \
                self.image.handles.get(self.labels_path).read(1, window=window)
        except RasterioError as exc:
            raise InputError(f"cannot read {self.labels_path} ({str(exc).strip()}); re-create the file") from None
        if self.label_nodata is not None and 0 <= self.label_nodata <= 255:
            labels[labels == int(self.label_nodata)] = IGNORE
        if self.label_planes:
            check_plane_values(labels, self.labels_path, start)
        else:
            _check_labels(labels, self.num_classes, self.labels_path, start)
        labels[..., ~valid] = IGNORE
        return Chip(image, labels, valid)

    def read_instances_inside(self, start: Start, shape: tuple[int, ...]) -> npt.NDArray[np.int64]:
        assert self.instances_path is not None
        window = Window(start[1], start[0], shape[1], shape[0])
        try:
            ids = self.image.handles.get(self.instances_path).read(1, window=window).astype(np.int64)
        except RasterioError as exc:
            raise InputError(f"cannot read {self.instances_path} ({str(exc).strip()}); re-create the file") from None
        if ids.size and ids.min() < 0:
            raise InputError(f"instance raster {self.instances_path} holds id {int(ids.min())} near row {start[0]} "
                             f"col {start[1]}: expected ids >= 0 (0 = no instance)")
        return ids

    def close(self) -> None:
        self.image.handles.close()


class VectorSource(ScannedLocations, ChipSource):
    """A GeoTIFF image labelled by GeoJSON polygons, rasterised per chip on the image grid.

    Each feature's ``property`` holds a class name or index (or a key of ``class_map``); pixels
    under no polygon are class 0. Polygons are reprojected to the image CRS when the file's CRS
    (``crs`` argument, else the file's legacy ``crs`` member, else EPSG:4326 as RFC 7946 says)
    differs from it; :func:`~segflow.training.vector_labels.read_vector_labels` refuses a CRS that
    cannot be right and unknown classes (see there). With ``multilabel`` the polygons are
    rasterised class by class into one 0/1 plane per class (overlaps kept); every polygon (but
    those mapped to ``ignore``) is an instance for border weights.
    """

    has_instances = True

    def __init__(self, image: Path, labels: Path, bands: Sequence[tuple[str, int | None]],
                 class_names: Sequence[str], *, key: str = "class", crs: str | None = None,
                 all_touched: bool = False, class_map: Mapping[str, int | str] | None = None,
                 unknown_classes: str = "error", multilabel: bool = False):
        self.label_planes = len(class_names) if multilabel else 0
        self.image = _ImageReader(Path(image), bands)
        self.path = Path(labels)
        meta = self.image.meta
        found = read_vector_labels(self.path, image_crs=meta["crs"], image_transform=meta["transform"],
                                   image_shape=(meta["height"], meta["width"]), class_names=class_names, key=key,
                                   crs=crs, class_map=class_map, unknown_classes=unknown_classes)
        geometries = found.geometries
        self.geometries, self.values, self.boxes = found.geometries, found.values, found.boxes
        self.all_touched = all_touched
        self.spatial_shape = (self.image.meta["height"], self.image.meta["width"])
        self.num_bands = len(self.image.bands)
        self.description = f"{self.image.path} with {len(geometries)} polygons from {self.path}"

    def _hits(self, start: Start, shape: tuple[int, ...]) -> tuple[Affine, np.ndarray]:
        """The box's transform and the indices of the polygons whose bounding boxes meet it."""
        transform = self.image.meta["transform"] @ Affine.translation(start[1], start[0])
        corners = np.array([transform @ (0, 0), transform @ (shape[1], shape[0])])
        x0, y0 = corners.min(axis=0)
        x1, y1 = corners.max(axis=0)
        b = self.boxes
        return transform, np.flatnonzero((b[:, 0] <= x1) & (b[:, 2] >= x0) & (b[:, 1] <= y1) & (b[:, 3] >= y0))

    def read_instances_inside(self, start: Start, shape: tuple[int, ...]) -> npt.NDArray[np.int64]:
        transform, hits = self._hits(start, shape)
        hits = hits[self.values[hits] != IGNORE]
        return rasterize_instances(self.geometries, hits, shape, transform, self.all_touched)

    def read_inside(self, start: Start, shape: tuple[int, ...]) -> Chip:
        image, valid = self.image.read(start, shape)
        transform, hits = self._hits(start, shape)
        labels = np.zeros(shape, dtype=np.uint8)
        if self.label_planes:
            labels = rasterize_planes(self.geometries, self.values, hits, self.label_planes, shape, transform,
                                      self.all_touched)
        elif hits.size:
            shapes = [(self.geometries[i], int(self.values[i])) for i in hits]
            labels = rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype="uint8",
                               all_touched=self.all_touched)
        labels[..., ~valid] = IGNORE
        return Chip(image, labels, valid)

    def close(self) -> None:
        self.image.handles.close()


class SyntheticSceneSource(ScannedLocations, ChipSource):
    """A synthetic multispectral scene of :mod:`segflow.synthetic`, generated chip by chip.

    Its buildings are the instances (two that touch are two instances); with ``multilabel`` the
    labels are one plane per model class, each named after a scene class.
    """

    has_instances = True

    def __init__(self, seed: int, shape: tuple[int, int], bands: Sequence[str], class_names: Sequence[str], *,
                 multilabel: bool = False):
        self.seed = int(seed)
        self.bands = tuple(b.lower() for b in bands)
        self.planes = plane_values(synthetic.CLASSES, class_names, "synthetic scene") if multilabel else None
        self.label_planes = len(class_names) if multilabel else 0
        self.table = _class_table(synthetic.CLASSES, class_names, "synthetic scene") if not multilabel else \
            np.zeros(256, dtype=np.uint8)
        self.spatial_shape = (int(shape[0]), int(shape[1]))
        self.num_bands = len(self.bands)
        self.description = f"synthetic scene seed {seed}, {shape[1]}x{shape[0]} px"

    def read_inside(self, start: Start, shape: tuple[int, ...]) -> Chip:
        image, truth = synthetic.synthesize_block(start[0], start[1], shape[0], shape[1], seed=self.seed,
                                                  bands=self.bands)
        labels = self.table[truth] if self.planes is None else one_hot_planes(truth, self.planes,
                                                                               synthetic.TRUTH_NODATA)
        return Chip(image.astype(np.float32), labels, truth != synthetic.TRUTH_NODATA)

    def read_instances_inside(self, start: Start, shape: tuple[int, ...]) -> npt.NDArray[np.int64]:
        return synthetic.synthesize_instances(start[0], start[1], shape[0], shape[1], seed=self.seed)


class VolumeSource(ChipSource):
    """A volume held in memory: image ``(C, Z, Y, X)`` and labels ``(Z, Y, X)`` uint8."""

    def __init__(self, image: np.ndarray, labels: np.ndarray, description: str):
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4 or labels.shape != image.shape[1:]:
            raise InputError(f"volume {description}: image {image.shape} and labels {labels.shape} do not match; "
                             "expected (C, Z, Y, X) and (Z, Y, X)")
        self.image_array, self.labels_array = image, labels
        self.spatial_shape = tuple(int(s) for s in labels.shape)
        self.num_bands = int(image.shape[0])
        self.description = description

    def read_inside(self, start: Start, shape: tuple[int, ...]) -> Chip:
        where = tuple(slice(s, s + n) for s, n in zip(start, shape, strict=True))
        labels = np.array(self.labels_array[where], dtype=np.uint8)
        return Chip(np.asarray(self.image_array[(slice(None), *where)], dtype=np.float32), labels,
                    np.ones(shape, dtype=bool))


def _synthetic_shape(size: int | list[int], dims: int) -> tuple[int, ...]:
    return (size,) * dims if isinstance(size, int) else tuple(size) * (dims if len(size) == 1 else 1)


def build_sources(data: DataConfig, model: ModelConfig, target: VolumeTarget | None = None) -> list[ChipSource]:
    """Every labelled source of ``data``, in config order: pairs, vectors, NIfTI pairs, then synthetic items.

    NIfTI pairs are seen on the model grid ``target`` (spacing and orientation; by default the
    one :func:`segflow.training.nifti.resolve_target` gives for these pairs): pass the training
    data's target when building validation or test sources. Synthetic volumes have no
    geometry: their voxels are taken as voxels of the model grid.

    Raises
    ------
    InputError
        If a file is missing, unreadable, or its labels are not on the image grid.
    """
    bands = [(b.name, b.index) for b in model.bands]
    names = model.class_names
    sources: list[ChipSource] = []
    multilabel = model.output.multilabel
    for pair in data.pairs:
        sources.append(RasterPairSource(pair.image, pair.labels, bands, len(names), multilabel=multilabel,
                                        class_names=names, instances=pair.instances))
    for vector in data.vectors:
        sources.append(VectorSource(vector.image, vector.labels, bands, names, key=vector.property,
                                    crs=vector.crs, all_touched=vector.all_touched, class_map=vector.class_map,
                                    unknown_classes=vector.unknown_classes, multilabel=multilabel))
    if data.nifti:
        sources.extend(nifti_sources(data.nifti, model, target))
    spec = data.synthetic
    if spec is not None:
        shape = _synthetic_shape(spec.size, model.spatial_dims)
        for k in range(spec.count):
            if spec.kind == "scenes":
                sources.append(SyntheticSceneSource(spec.seed + k, (shape[0], shape[1]), [b.name for b in model.bands],
                                                    names, multilabel=multilabel))
            else:
                image, truth = synthetic_volume.synthesize_volume(shape, seed=spec.seed + k)
                table = _class_table(synthetic_volume.CLASSES, names, "synthetic volume")
                sources.append(VolumeSource(image, table[truth],
                                            f"synthetic volume seed {spec.seed + k}, {'x'.join(map(str, shape))} vox"))
    return sources
