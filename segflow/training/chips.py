"""Labelled training chips, read window by window from scenes and volumes of any size.

A :class:`ChipSource` is one labelled image: a GeoTIFF with a label raster, a GeoTIFF with
GeoJSON polygons (rasterised per chip on the image grid), a synthetic scene generated block by
block, a synthetic volume, or a NIfTI image/label pair seen on the model's voxel grid
(:mod:`segflow.training.nifti`). ``source.read(start, shape)`` returns a :class:`Chip`: image
``(C, *shape)`` float32, labels ``shape`` uint8 (:data:`IGNORE` = unlabelled) and validity
``shape`` bool, padded with ignored pixels where the window leaves the source. A raster is never
read whole: each chip is one windowed read.

The base class :class:`~segflow.training.sources.ChipSource` and :class:`~segflow.training.sources.Chip`
are in :mod:`segflow.training.sources`; where chips are taken (the validation hold-out, the random
positions) in :mod:`segflow.training.sampling`.
Spatial axes are ``(Y, X)`` for rasters and ``(Z, Y, X)`` for volumes; channels come first.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioError
from rasterio.features import rasterize
from rasterio.transform import Affine
from rasterio.warp import transform_geom
from rasterio.windows import Window

from .. import georef, synthetic
from ..errors import ConfigError, InputError
from ..georef import PixelGrid
from ..synthetic import volume as synthetic_volume
from .config import ModelConfig
from .data_config import DataConfig
from .nifti import VolumeTarget, nifti_sources
from .sources import IGNORE, Chip, ChipSource, Start

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


class _Handles:
    """One rasterio dataset per (thread, path): GDAL handles must not be shared across threads."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[Any] = []

    def get(self, path: Path) -> Any:
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = {}
        if path not in handles:
            ds = rasterio.open(path)
            handles[path] = ds
            with self._lock:
                self._all.append(ds)
        return handles[path]

    def close(self) -> None:
        with self._lock:
            for ds in self._all:
                ds.close()
            self._all.clear()
        self._local = threading.local()


def _open_meta(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{what} {path} not found; check the path in the training config")
    try:
        with rasterio.open(path) as ds:
            return {"count": ds.count, "width": ds.width, "height": ds.height, "crs": ds.crs,
                    "transform": ds.transform, "dtypes": ds.dtypes, "nodata": ds.nodata,
                    "descriptions": tuple((d or "").strip().lower() for d in ds.descriptions),
                    "tags": ds.tags()}
    except RasterioError as exc:
        raise InputError(
            f"{what} {path} is not a raster GDAL can read ({str(exc).strip()}); expected a GeoTIFF"
        ) from None


def _band_numbers(bands: Sequence[tuple[str, int | None]], meta: dict[str, Any], path: Path) -> list[int]:
    """1-based band numbers of the model inputs: declared index, else matching description, else position."""
    numbers = []
    for position, (name, index) in enumerate(bands):
        if index is not None:
            number = index
        elif name.lower() in meta["descriptions"]:
            number = meta["descriptions"].index(name.lower()) + 1
        else:
            number = position + 1
        if number > meta["count"]:
            raise InputError(
                f"model band {name!r} is band {number} but {path} has {meta['count']} band(s); "
                "fix the band's index in model.bands"
            )
        numbers.append(number)
    return numbers


class _ImageReader:
    """Windowed reads of selected bands of a GeoTIFF, with its validity mask."""

    def __init__(self, path: Path, bands: Sequence[tuple[str, int | None]]) -> None:
        self.path = path
        self.meta = _open_meta(path, "image")
        self.bands = _band_numbers(bands, self.meta, path)
        self.handles = _Handles()
        self.masked = self.meta["nodata"] is not None

    def read(self, start: Start, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        window = Window(start[1], start[0], shape[1], shape[0])
        try:
            ds = self.handles.get(self.path)
            image = ds.read(self.bands, window=window).astype(np.float32)
            valid = ds.dataset_mask(window=window) > 0 if self.masked else np.ones(shape, dtype=bool)
        except RasterioError as exc:
            raise InputError(
                f"cannot read rows {start[0]}:{start[0] + shape[0]} cols {start[1]}:{start[1] + shape[1]} of "
                f"{self.path} ({str(exc).strip()}); the file may be truncated, re-create it"
            ) from None
        return image, valid


def _check_labels(labels: np.ndarray, num_classes: int, path: Path, start: Start) -> None:
    bad = (labels != IGNORE) & (labels >= num_classes)
    if bad.any():
        value = int(labels[bad][0])
        raise InputError(
            f"{path} holds label {value} near row {start[0]} col {start[1]}: expected class indices "
            f"0..{num_classes - 1} or {IGNORE} (unlabelled); fix the labels or declare more classes"
        )


class RasterPairSource(ChipSource):
    """A GeoTIFF image and a single-band ``uint8`` label raster on exactly the same grid.

    Label values are class indices; the label raster's nodata value and 255 mean unlabelled,
    and image nodata pixels are unlabelled too.
    """

    def __init__(self, image: Path, labels: Path, bands: Sequence[tuple[str, int | None]], num_classes: int):
        self.image = _ImageReader(Path(image), bands)
        self.labels_path = Path(labels)
        meta = _open_meta(self.labels_path, "label raster")
        _check_same_grid(self.image.meta, meta, self.image.path, self.labels_path)
        if meta["count"] != 1 or meta["dtypes"][0] != "uint8":
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
            labels = self.image.handles.get(self.labels_path).read(1, window=window)
        except RasterioError as exc:
            raise InputError(f"cannot read {self.labels_path} ({str(exc).strip()}); re-create the file") from None
        if self.label_nodata is not None and 0 <= self.label_nodata <= 255:
            labels[labels == int(self.label_nodata)] = IGNORE
        _check_labels(labels, self.num_classes, self.labels_path, start)
        labels[~valid] = IGNORE
        return Chip(image, labels, valid)

    def close(self) -> None:
        self.image.handles.close()


def _check_same_grid(image: dict[str, Any], labels: dict[str, Any], image_path: Path, labels_path: Path) -> None:
    """Raise InputError unless both rasters have the same shape, CRS and transform."""
    georef.check_same_grid(PixelGrid.of((image["height"], image["width"]), image["crs"], image["transform"]),
                           PixelGrid.of((labels["height"], labels["width"]), labels["crs"], labels["transform"]),
                           names=("image", "label raster"), paths=(image_path, labels_path))


def _crs_of(value: object, what: str) -> CRS:
    try:
        return CRS.from_user_input(value)
    except CRSError:
        raise InputError(f"{what} CRS {value!r} is not understood; give e.g. EPSG:4326 or EPSG:32633") from None


def _geojson_features(path: Path) -> tuple[list[dict[str, Any]], object]:
    """The features of a GeoJSON file and its legacy ``crs`` name (or None)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"vector labels {path} not found; check the path in the training config") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"vector labels {path} are not readable GeoJSON ({exc}); expected a FeatureCollection"
        ) from None
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "Feature":
        features = [data]
    elif kind == "FeatureCollection" and isinstance(data.get("features"), list):
        features = data["features"]
    else:
        raise InputError(f"vector labels {path} hold a GeoJSON {kind!r}: expected a FeatureCollection of polygons")
    crs = data.get("crs", {}).get("properties", {}).get("name") if isinstance(data.get("crs"), dict) else None
    return features, crs


def _feature_class(feature: object, key: str, names: Sequence[str], path: Path, number: int) -> int:
    props = feature.get("properties") if isinstance(feature, dict) else None
    value = props.get(key) if isinstance(props, dict) else None
    if isinstance(value, str) and value in names:
        return names.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return value
    raise InputError(
        f"feature {number} of {path} has {key}={value!r}: expected a class name from {list(names)} or an index "
        f"0..{len(names) - 1}; fix the feature or set the vector 'property' to the right attribute"
    )


def _geometry_bounds(geometry: dict[str, Any]) -> tuple[float, float, float, float]:
    coords = np.asarray(list(_flatten(geometry.get("coordinates", []))), dtype=np.float64).reshape(-1, 2)
    if coords.size == 0:
        return (math.inf, math.inf, -math.inf, -math.inf)
    return (float(coords[:, 0].min()), float(coords[:, 1].min()), float(coords[:, 0].max()), float(coords[:, 1].max()))


def _flatten(coords: object) -> Any:
    if isinstance(coords, list | tuple) and coords and isinstance(coords[0], int | float):
        yield from coords[:2]
    elif isinstance(coords, list | tuple):
        for item in coords:
            yield from _flatten(item)


class VectorSource(ChipSource):
    """A GeoTIFF image labelled by GeoJSON polygons, rasterised per chip on the image grid.

    Each feature's ``property`` holds a class name or index; pixels under no polygon are class 0.
    Polygons are reprojected to the image CRS when the file's CRS (``crs`` argument, else the
    file's legacy ``crs`` member, else EPSG:4326 as RFC 7946 says) differs from it.
    """

    def __init__(self, image: Path, labels: Path, bands: Sequence[tuple[str, int | None]],
                 class_names: Sequence[str], *, key: str = "class", crs: str | None = None,
                 all_touched: bool = False):
        self.image = _ImageReader(Path(image), bands)
        self.path = Path(labels)
        features, file_crs = _geojson_features(self.path)
        image_crs = self.image.meta["crs"]
        source_crs = crs or file_crs
        geometries, values, boxes = [], [], []
        for number, feature in enumerate(features):
            geometry = feature.get("geometry") if isinstance(feature, dict) else None
            if not isinstance(geometry, dict) or "type" not in geometry:
                raise InputError(f"feature {number} of {self.path} has no geometry; remove it or give it a polygon")
            values.append(_feature_class(feature, key, class_names, self.path, number))
            if image_crs is not None:
                vector_crs = _crs_of(source_crs or "EPSG:4326", f"vector labels {self.path}")
                if vector_crs != image_crs:
                    geometry = transform_geom(vector_crs, image_crs, geometry)
            geometries.append(geometry)
            boxes.append(_geometry_bounds(geometry))
        self.geometries, self.values = geometries, np.asarray(values, dtype=np.uint8)
        self.boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        self.all_touched = all_touched
        self.spatial_shape = (self.image.meta["height"], self.image.meta["width"])
        self.num_bands = len(self.image.bands)
        self.description = f"{self.image.path} with {len(geometries)} polygons from {self.path}"

    def read_inside(self, start: Start, shape: tuple[int, ...]) -> Chip:
        image, valid = self.image.read(start, shape)
        transform = self.image.meta["transform"] @ Affine.translation(start[1], start[0])
        corners = np.array([transform @ (0, 0), transform @ (shape[1], shape[0])])
        x0, y0 = corners.min(axis=0)
        x1, y1 = corners.max(axis=0)
        b = self.boxes
        hits = np.flatnonzero((b[:, 0] <= x1) & (b[:, 2] >= x0) & (b[:, 1] <= y1) & (b[:, 3] >= y0))
        labels = np.zeros(shape, dtype=np.uint8)
        if hits.size:
            shapes = [(self.geometries[i], int(self.values[i])) for i in hits]
            labels = rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype="uint8",
                               all_touched=self.all_touched)
        labels[~valid] = IGNORE
        return Chip(image, labels, valid)

    def close(self) -> None:
        self.image.handles.close()


class SyntheticSceneSource(ChipSource):
    """A synthetic multispectral scene of :mod:`segflow.synthetic`, generated chip by chip."""

    def __init__(self, seed: int, shape: tuple[int, int], bands: Sequence[str], class_names: Sequence[str]):
        self.seed = int(seed)
        self.bands = tuple(b.lower() for b in bands)
        self.table = _class_table(synthetic.CLASSES, class_names, "synthetic scene")
        self.spatial_shape = (int(shape[0]), int(shape[1]))
        self.num_bands = len(self.bands)
        self.description = f"synthetic scene seed {seed}, {shape[1]}x{shape[0]} px"

    def read_inside(self, start: Start, shape: tuple[int, ...]) -> Chip:
        image, truth = synthetic.synthesize_block(start[0], start[1], shape[0], shape[1], seed=self.seed,
                                                  bands=self.bands)
        return Chip(image.astype(np.float32), self.table[truth], truth != synthetic.TRUTH_NODATA)


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
    for pair in data.pairs:
        sources.append(RasterPairSource(pair.image, pair.labels, bands, len(names)))
    for vector in data.vectors:
        sources.append(VectorSource(vector.image, vector.labels, bands, names, key=vector.property,
                                    crs=vector.crs, all_touched=vector.all_touched))
    if data.nifti:
        sources.extend(nifti_sources(data.nifti, model, target))
    spec = data.synthetic
    if spec is not None:
        shape = _synthetic_shape(spec.size, model.spatial_dims)
        for k in range(spec.count):
            if spec.kind == "scenes":
                sources.append(SyntheticSceneSource(spec.seed + k, (shape[0], shape[1]), [b.name for b in model.bands],
                                                    names))
            else:
                image, truth = synthetic_volume.synthesize_volume(shape, seed=spec.seed + k)
                table = _class_table(synthetic_volume.CLASSES, names, "synthetic volume")
                sources.append(VolumeSource(image, table[truth],
                                            f"synthetic volume seed {spec.seed + k}, {'x'.join(map(str, shape))} vox"))
    return sources
