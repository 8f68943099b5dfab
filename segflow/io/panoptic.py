"""``panoptic.tif`` (``--panoptic``): class and instance ids of every pixel, next to the semantic labels.

Band 1 ``class``: the class id (255 = nodata, as ``labels.tif``). Band 2 ``instance``: for pixels of
a "thing" class the object's ``instance_id`` in the vector output (1 + the flat index of its first
pixel, see :mod:`segflow.vectorize`), 0 for stuff and background. Both bands are uint32, tiled,
deflate-compressed, with nearest-neighbour overviews. The same ids go into ``mask.zarr`` as the
``instances`` array. Instances are labelled with :func:`segflow.instances.label_instances` (face
connectivity, ids global across chunk seams, memory bounded by a chunk).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.enums import Resampling

from ..errors import ConfigError, OutputError
from ..geometry import RasterGeometry
from ..instances import label_instances
from ..labels import LABEL_NODATA
from ..tiling import ChunkGrid
from .mask_store import MaskStore

if TYPE_CHECKING:
    from ..models.package import ModelSpec
    from ..scene import Scene

__all__ = ["PanopticSink"]

MAX_PIXELS = int(np.iinfo(np.uint32).max)  # instance ids are pixel indices + 1


def overview_factors(height: int, width: int) -> list[int]:
    """Overview levels of ``panoptic.tif``: halvings (up to 1/64) while the shorter side keeps 256 pixels."""
    return [f for f in (2, 4, 8, 16, 32, 64) if min(height, width) // f >= 256]


@dataclass(frozen=True)
class PanopticSink:
    geometry: RasterGeometry
    things: tuple[int, ...]
    name: str = "panoptic.tif"

    @classmethod
    def for_scene(cls, scene: Scene, spec: ModelSpec) -> PanopticSink:
        if not isinstance(scene.geometry, RasterGeometry):
            raise ConfigError("--panoptic writes a raster of class and instance ids for 2D rasters; volumes get "
                              "instances.csv and the instances array of mask.zarr")
        if int(np.prod(scene.spatial_shape)) >= MAX_PIXELS:
            raise ConfigError(f"--panoptic numbers instances by pixel, which uint32 holds only below {MAX_PIXELS} "
                              "pixels; split the scene")
        things = tuple(i for i, c in enumerate(spec.classes) if c.kind == "thing" and i > 0)
        if not things:
            raise ConfigError(f"model {spec.name!r} has no thing class, so --panoptic would have no instances; "
                              "leave it out")
        return cls(scene.geometry, things)

    @property
    def entries(self) -> tuple[str, ...]:
        return (self.name,)

    def write(self, store: MaskStore, folder: Path) -> Path:
        from ..vectorize import tracing_chunk

        chunk = tracing_chunk(store)
        ids: Any = store.group.create_array("instances", shape=store.shape, dtype="uint32", chunks=chunk,
                                            fill_value=0, dimension_names=["y", "x"], overwrite=True)
        found = label_instances(store.labels, ids, chunk, self.things)
        lookup = np.concatenate([[0], found.first + 1]).astype(np.uint32)  # rank -> first pixel + 1
        path = folder / self.name
        height, width = store.shape
        profile = {"driver": "GTiff", "width": width, "height": height, "count": 2, "dtype": "uint32",
                   "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate", "predictor": 2,
                   "BIGTIFF": "IF_SAFER"}
        if self.geometry.transform is not None:
            profile.update(crs=self.geometry.crs, transform=self.geometry.transform)
        with rasterio.open(path, "w", **profile) as out:
            out.descriptions = ("class", "instance")
            out.update_tags(2, instance_id="1 + row * width + col of the instance's first pixel; 0 = none")
            out.update_tags(1, nodata=str(LABEL_NODATA))
            for _, box in ChunkGrid.create(store.shape, chunk):
                window = ((box.start[0], box.stop[0]), (box.start[1], box.stop[1]))
                instance = lookup[np.asarray(ids[box.slices])]
                ids[box.slices] = instance
                out.write(store.read_labels(box).astype(np.uint32), 1, window=window)
                out.write(instance, 2, window=window)
            factors = overview_factors(height, width)
            if factors:
                out.build_overviews(factors, Resampling.nearest)
        with rasterio.open(path) as back:
            if back.count != 2 or (back.height, back.width) != store.shape:
                raise OutputError(f"{path} does not read back as written; check the disk and run again")
        ids.attrs.update({"things": list(self.things), "id": "1 + flat index of the instance's first pixel"})
        return path
