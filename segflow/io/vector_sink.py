"""``instances.<format>``: the objects of a raster run as polygons in the scene's CRS (``--vectorize``).

A sink like the others: built from the finished store, written into the staging folder, read back
(feature count) before publication. The objects are traced in one pass over the store
(:mod:`segflow.vectorize`, which says what an object is) and streamed to the file
(:mod:`segflow.io.vector_files`); :data:`segflow.features.FIELDS` lists the columns.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import zarr
from affine import Affine
from rasterio.crs import CRS

from ..errors import ConfigError, OutputError, SegflowError
from ..features import LayerInfo
from ..geometry import RasterGeometry
from ..vectorize import VectorOptions, tracing_chunk, vectorize
from .atomic import atomic_path
from .mask_store import MaskStore
from .vector_files import VECTOR_FORMATS, check_format, count_features, vector_name, write_vectors

if TYPE_CHECKING:
    from ..models.package import ModelSpec
    from ..scene import Scene

__all__ = ["VectorSink", "scene_id_of", "vectorize_run"]


def scene_id_of(name: str) -> str:
    """The ``scene_id`` of rows from an input name: its last path component without the suffix
    (``/data/2024/T33UVP.tif`` → ``T33UVP``; GDAL names such as ``/vsizip/a.zip/b.tif`` → ``b``)."""
    last = PurePosixPath(str(name).replace("\\", "/")).name or str(name)  # trailing slashes are dropped
    return PurePosixPath(last).stem or last


@dataclass(frozen=True)
class VectorSink:
    """Polygons of every object (things and stuff regions, class 0 excluded) in ``fmt``.

    Of a multi-label run: every class's connected regions, class 0 included, overlapping across classes
    (:mod:`segflow.vectorize`)."""

    crs_wkt: str | None
    transform: tuple[float, ...]
    class_names: tuple[str, ...]
    kinds: tuple[str, ...]
    scene_id: str
    model: str
    model_version: str
    fmt: str = "gpkg"
    options: VectorOptions = field(default_factory=VectorOptions)

    @classmethod
    def for_scene(cls, scene: Scene, spec: ModelSpec, scene_id: str, fmt: str = "gpkg",
                  options: VectorOptions | None = None) -> VectorSink:
        """Checks what can be checked before a run: a 2D raster, an affine grid, the format, the options."""
        geometry = scene.geometry
        if not isinstance(geometry, RasterGeometry):
            raise ConfigError("--vectorize writes polygons of 2D rasters; for a volume use instances.csv and "
                              "--meshes")
        if geometry.transform is None and (geometry.gcps or geometry.rpcs):
            raise ConfigError(f"{scene_id} is georeferenced by ground control points or RPCs, not an affine "
                              "transform, so its polygons would be in pixels; warp it first (gdalwarp) and "
                              "vectorize the warped scene")
        return cls.create(geometry.crs, geometry.transform, spec, scene_id, fmt, options)

    @classmethod
    def create(cls, crs_wkt: str | None, transform: Sequence[float] | None, spec: ModelSpec, scene_id: str,
               fmt: str = "gpkg", options: VectorOptions | None = None) -> VectorSink:
        options = options or VectorOptions()
        options.check()
        check_format(fmt, crs_wkt)  # before anything runs
        return cls(crs_wkt, tuple(transform) if transform else tuple(Affine.identity())[:6],
                   tuple(spec.class_names), tuple(c.kind for c in spec.classes), scene_id, spec.name,
                   str(spec.version), fmt, options)

    @property
    def name(self) -> str:
        return vector_name(self.fmt)

    @property
    def entries(self) -> tuple[str, ...]:
        return (self.name,)

    def layer(self) -> LayerInfo:
        epsg = None
        if self.crs_wkt is not None:
            epsg = CRS.from_wkt(self.crs_wkt).to_epsg()
        return LayerInfo(self.crs_wkt, epsg, self.scene_id)

    def write(self, store: MaskStore, folder: Path) -> Path:
        if len(store.shape) != 2:
            raise ConfigError(f"the mask store is {len(store.shape)}-D; polygons need a 2D raster run")
        chunk = tracing_chunk(store)
        path = folder / self.name
        features = vectorize(store, chunk, Affine(*self.transform), self.class_names, self.kinds, self.options,
                             scene_id=self.scene_id, model=self.model, model_version=self.model_version,
                             run_id=(store.fingerprint or "")[:16])
        written = write_vectors(path, self.fmt, self.layer(), features)
        found = count_features(path, self.fmt)
        if found != written:
            raise OutputError(f"{path} holds {found} features but {written} were written; the disk may be full or "
                              "failing: check it and run again")
        return path


def vectorize_run(run: Path, output: Path, *, fmt: str | None = None, options: VectorOptions | None = None,
                  model: str | None = None) -> int:
    """``segflow vectorize``: the objects of an existing raster run (its folder or ``mask.zarr``) as a vector file.

    The format comes from ``output``'s suffix unless ``fmt`` is given; the classes' kinds from the run's
    model (``model`` names another when that one is not available here). The run is only read; the file
    is published atomically. Returns the number of features written.
    """
    from ..models import resolve_package

    store_path = run if (run / "zarr.json").exists() else run / "mask.zarr"
    store = MaskStore.open(store_path)
    attrs = store.attrs
    if len(store.shape) != 2:
        raise ConfigError(f"{run} is a {len(store.shape)}-D run; polygons come from 2D raster runs")
    if fmt is None:
        fmt = next((k for k, (_, suffix) in VECTOR_FORMATS.items() if output.name.lower().endswith(suffix)), None)
        if fmt is None:
            raise ConfigError(f"cannot tell the format of {output.name} from its suffix; use one of "
                              f"{', '.join(s for _, s in VECTOR_FORMATS.values())} or --format")
    name = model or attrs.get("model")
    try:
        spec = resolve_package(str(name)).spec
    except SegflowError:
        raise ConfigError(f"the run's model {name!r} is not available here; pass --model with it (a name or a "
                          "package folder) so the classes' kinds are known") from None
    if list(spec.class_names) != list(attrs.get("class_names", spec.class_names)):
        raise ConfigError(f"model {spec.name!r} has classes {list(spec.class_names)} but the run has "
                          f"{attrs.get('class_names')}; pass the model the run used (--model)")
    sink = VectorSink.create(attrs.get("crs"), attrs.get("transform"), spec,
                             scene_id_of(str(attrs.get("source") or run.name)), fmt, options)
    with atomic_path(output) as temp, tempfile.TemporaryDirectory(dir=output.parent, prefix=".segflow-") as scratch:
        work = zarr.open_group(str(Path(scratch) / "work.zarr"), mode="w")  # the run itself is only read
        stream = vectorize(store, tracing_chunk(store), Affine(*sink.transform), sink.class_names, sink.kinds,
                           sink.options, scene_id=sink.scene_id, model=sink.model, model_version=sink.model_version,
                           run_id=(store.fingerprint or "")[:16], work=work)
        named = Path(scratch) / output.name  # GDAL warns of a GeoPackage whose name does not end in .gpkg
        written = write_vectors(named, fmt, sink.layer(), stream)
        if count_features(named, fmt) != written:
            raise OutputError(f"{output} did not read back with the {written} features written; the disk may be "
                              "full or failing: check it and run again")
        os.replace(named, temp)
    return written
