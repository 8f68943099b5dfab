"""``instances.csv``: one row per instance of the model's "thing" classes, and their ids in ``mask.zarr``.

The sink labels the store's labels with :func:`segflow.instances.label_instances` (ids global
across chunk seams, numbered in raster order of each instance's first voxel, face connectivity
by default, as ``scipy.ndimage.label``), chunk by chunk, and adds them to the run's
``mask.zarr`` as the ``instances`` array (uint32 over the spatial axes, 0 = no instance, else
the ``id`` of a row). Memory is bounded by the labelling chunk (:func:`labelling_chunk`).

Columns, volumes (axes ``z, y, x``; world = the scene's RAS+ millimetres through
``VolumeGeometry.affine`` over ``(z, y, x, 1)``, whose rows are world x, y, z):

``id, class, voxels, volume_ml, centroid_{x,y,z}_mm, bbox_min_{x,y,z}_mm, bbox_max_{x,y,z}_mm,
mean_intensity, max_intensity, mean_score``

- ``volume_ml`` = voxels × |det(affine[:3, :3])| / 1000.
- the centroid is the mean voxel index mapped to the world; the bounding box is the world
  axis-aligned box around the instance's voxel box with its outer voxel edges (index start − ½
  and stop − ½ on each axis), so it holds every voxel whole.

Rasters (axes ``y, x``; world = CRS coordinates through the affine transform, pixel corners at
integer (col, row), as rasterio): ``id, class, pixels, area_<unit>, centroid_x, centroid_y,
bbox_min_x, bbox_min_y, bbox_max_x, bbox_max_y, mean_intensity, max_intensity, mean_score`` where
the area column is ``area_m2`` for a CRS in metres, ``area_deg2`` for a geographic CRS and
``area_crs2`` (squared CRS units) otherwise; the centroid is the mean pixel centre
(col + ½, row + ½); the bounding box holds the pixels whole.

Both: ``class`` is the class name; ``mean_intensity`` / ``max_intensity`` are over the instance's
voxels of the scene's first channel (the model's first input, in the values the model reads;
NaN if any of those voxels is NaN); ``mean_score`` is the mean of the instance's own class score
from the store's ``scores``, and is EMPTY in every row when the run kept no scores (run with
scores saved to get it). Numbers are written with Python's shortest round-trip ``repr``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pyproj import CRS

from ..errors import InputError, OutputError
from ..geometry import VolumeGeometry
from ..instances import Instances, Reader, label_instances
from ..instances_numbered import measure_instances
from ..tiling import Box, ChunkGrid
from ..trace_values import detected_instances
from .atomic import atomic_write_text
from .mask_store import MaskStore

if TYPE_CHECKING:
    from ..models.package import ModelSpec
    from ..scene import Scene

__all__ = ["MAX_CHUNK_VOXELS", "InstancesSink", "area_column", "instance_rows", "labelling_chunk"]

MAX_CHUNK_VOXELS = 1 << 22
"""Most voxels in one labelling chunk (about 50 bytes of working memory each at worst)."""

INTENSITY, SCORE = "intensity", "score"


def labelling_chunk(chunk: Sequence[int], limit: int = MAX_CHUNK_VOXELS) -> tuple[int, ...]:
    """The store's array chunk, its largest axis halved (rounded up) until it holds at most ``limit`` voxels."""
    out = [int(c) for c in chunk]
    while math.prod(out) > limit and max(out) > 1:
        axis = out.index(max(out))
        out[axis] = (out[axis] + 1) // 2
    return tuple(out)


def _num(value: float) -> str:
    return repr(float(value))


def _corners(start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """(M, 2**ndim, ndim) corners of the boxes ``[start, stop]`` (coordinates, not indices)."""
    ndim = start.shape[1]
    picks = np.array(np.meshgrid(*([[0, 1]] * ndim), indexing="ij")).reshape(ndim, -1).T  # (2**ndim, ndim)
    return np.where(picks[None, :, :] == 0, start[:, None, :], stop[:, None, :])


def area_column(crs: str | None) -> str:
    """The area column's name for ``crs``: ``area_m2`` (horizontal axes in metres, local engineering CRSs too),
    ``area_deg2`` (geographic) or ``area_crs2`` (other units, or no CRS)."""
    if crs:
        parsed = CRS.from_user_input(crs)
        if parsed.is_geographic:
            return "area_deg2"
        axes = parsed.axis_info[:2]  # GDAL says 'unknown' linear units for a LOCAL_CS; PROJ reads its axes
        if len(axes) == 2 and all(a.unit_name.lower() in ("metre", "meter", "m") for a in axes):
            return "area_m2"
    return "area_crs2"


def instance_rows(instances: Instances, class_names: Sequence[str], scene: Scene, *, scores: bool
                  ) -> tuple[list[str], list[list[str]]]:
    """The header and rows of ``instances.csv`` for ``instances`` measured on ``scene``'s grid."""
    m = len(instances)
    geometry = scene.geometry
    if isinstance(geometry, VolumeGeometry):
        affine = np.asarray(geometry.affine, dtype=np.float64)
        size = instances.voxels * abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
        centre = instances.centroid @ affine[:3, :3].T + affine[:3, 3]
        corners = _corners(instances.bbox_start - 0.5, instances.bbox_stop - 0.5) @ affine[:3, :3].T + affine[:3, 3]
        count, size_name, suffix, axes = "voxels", "volume_ml", "_mm", "xyz"
    else:
        if scene.transform is None:
            raise InputError(f"{scene.source} has no affine transform, so instances cannot be placed in the world; "
                             "georeference the raster (gdalwarp) first")
        a, b, c, d, e, f = scene.transform
        to_world = np.array([[a, b], [d, e]], dtype=np.float64)  # over (col, row)
        shift = np.array([c, f], dtype=np.float64)
        size = instances.voxels * abs(a * e - b * d)
        centre = (instances.centroid[:, ::-1] + 0.5) @ to_world.T + shift
        corners = _corners(instances.bbox_start[:, ::-1].astype(np.float64),
                           instances.bbox_stop[:, ::-1].astype(np.float64)) @ to_world.T + shift
        count, size_name, suffix, axes = "pixels", area_column(scene.crs), "", "xy"
    centre = centre.reshape(m, len(axes))
    corners = corners.reshape(m, 2 ** len(axes), len(axes))  # explicit: m may be 0 (no instance at all)
    low, high = corners.min(axis=1), corners.max(axis=1)  # over 4 or 8 corners, never empty
    header = ["id", "class", count, size_name,
              *(f"centroid_{x}{suffix}" for x in axes), *(f"bbox_min_{x}{suffix}" for x in axes),
              *(f"bbox_max_{x}{suffix}" for x in axes), "mean_intensity", "max_intensity", "mean_score"]
    mean_i, max_i = instances.mean(INTENSITY), instances.maxima[INTENSITY]
    mean_s = instances.mean(SCORE) if scores else None
    rows = []
    for i in range(m):
        rows.append([str(i + 1), class_names[int(instances.class_id[i])], str(int(instances.voxels[i])),
                     _num(size[i]), *map(_num, centre[i]), *map(_num, low[i]), *map(_num, high[i]),
                     _num(mean_i[i]), _num(max_i[i]), "" if mean_s is None else _num(mean_s[i])])
    return header, rows


def _intensity_reader(scene: Scene) -> Reader:
    first = scene.select_bands([0])
    return lambda box: first.read(box)[0][0]


def _score_reader(store: MaskStore) -> Reader:
    scores = store.scores
    assert scores is not None
    classes = int(scores.shape[0])

    def read(box: Box) -> np.ndarray:
        labels = np.minimum(store.read_labels(box), classes - 1).astype(np.intp)  # nodata: not an instance
        return np.take_along_axis(np.asarray(scores[(slice(None), *box.slices)]), labels[None], axis=0)[0]

    return read


def _measured(store: MaskStore, scene: Scene, chunk: tuple[int, ...], detected: tuple[Any, np.ndarray]
              ) -> tuple[Any, Instances]:
    """The measures of an instance model's instances; their score is the detection score."""
    ids, scores = detected
    instances = measure_instances(ids, store.labels, chunk, values={INTENSITY: _intensity_reader(scene)})
    if len(scores) != len(instances):
        raise InputError(f"{store.path} holds {len(instances)} detected instances but {len(scores)} scores; run "
                         "tile-infer again")
    instances.sums[SCORE] = scores * instances.voxels
    instances.maxima[SCORE] = scores
    return ids, instances


def _verify(path: Path, header: list[str], rows: list[list[str]], ids: Any, chunk: tuple[int, ...],
            voxels: np.ndarray) -> None:
    """``instances.csv`` parses back to exactly ``rows``; the ids array decodes, with the table's voxel counts."""
    def damaged(what: str) -> OutputError:
        return OutputError(f"{path} does not read back as written ({what}); the disk may be full or failing: "
                           "check the filesystem and run again (nothing was published)")

    with open(path, encoding="utf-8", newline="") as f:
        back = list(csv.reader(f))
    if back != [header, *rows]:
        raise damaged("the table differs")
    counted = np.zeros(len(voxels) + 1, np.int64)
    for _, box in ChunkGrid.create(tuple(ids.shape), chunk):
        try:
            block = np.asarray(ids[box.slices])
        except Exception as exc:  # zarr and its codecs raise many types for damaged chunks
            raise damaged(f"instances chunk at {list(box.start)}: {str(exc).strip()[:160]}") from None
        if block.size and int(block.max()) > len(voxels):
            raise damaged(f"instances chunk at {list(box.start)} holds ids beyond {len(voxels)}")
        counted += np.bincount(block.ravel(), minlength=len(voxels) + 1)
    if not np.array_equal(counted[1:], voxels):
        raise damaged("the instances array's voxel counts differ from the table")


@dataclass(frozen=True, eq=False)
class InstancesSink:
    """``instances.csv`` and the ``instances`` array of ``mask.zarr`` for the ``thing`` classes of ``spec``."""

    scene: Scene
    spec: ModelSpec
    connectivity: int = 1
    name: str = "instances.csv"

    @property
    def entries(self) -> tuple[str, ...]:
        return (self.name,)

    def _labelled(self, store: MaskStore, chunk: tuple[int, ...]) -> tuple[Any, Instances]:
        """Connected components of the thing classes, labelled into a new ``instances`` array."""
        things = [i for i, c in enumerate(self.spec.classes) if c.kind == "thing"]
        spatial_names = ["z", "y", "x"][-len(store.shape):]
        ids = store.group.create_array("instances", shape=store.shape, dtype="uint32", chunks=chunk, fill_value=0,
                                       dimension_names=spatial_names, overwrite=True)
        values: dict[str, Reader] = {INTENSITY: _intensity_reader(self.scene)}
        if store.scores is not None:
            values[SCORE] = _score_reader(store)
        instances = label_instances(store.labels, ids, chunk, things, connectivity=self.connectivity, values=values)
        ids.attrs.update({"things": [self.spec.classes[t].name for t in things], "connectivity": self.connectivity,
                          "count": len(instances)})
        return ids, instances

    def write(self, store: MaskStore, folder: Path) -> Path:
        if tuple(self.scene.spatial_shape) != store.shape:
            raise InputError(f"the scene is {self.scene.spatial_shape} but the mask store is {store.shape}; "
                             "pass the scene the store was made from")
        chunk = labelling_chunk(store.labels.chunks)
        detected = detected_instances(store)
        if detected is not None:
            ids, instances = _measured(store, self.scene, chunk, detected)
            scored = True
        else:
            ids, instances = self._labelled(store, chunk)
            scored = store.scores is not None
        ids.attrs.update({"table": self.name})
        header, rows = instance_rows(instances, self.spec.class_names, self.scene, scores=scored)
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows([header, *rows])
        path = atomic_write_text(folder / self.name, text.getvalue())
        _verify(path, header, rows, ids, chunk, instances.voxels)
        return path
