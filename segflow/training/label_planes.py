"""Labels of multi-label models and instance ids for border weights, as the chip sources read them.

A multi-label model's labels are one 0/1 plane per class, ``(K, Y, X)`` uint8 with
:data:`~segflow.training.sources.IGNORE` (255) where unlabelled, so classes may overlap:

* a **label raster** has one band per class, band k = class k (0 absent, 1 present, 255 or the
  raster's nodata unlabelled); when every band has a description, they must name the classes in
  order (a check against bands in the wrong order);
* **vector labels** are rasterised class by class: plane k is 1 under every polygon of class k,
  whatever other classes cover the pixel; polygons mapped to ``ignore`` make their pixels
  unlabelled in every plane;
* **synthetic scenes** (one class per pixel) give plane k = 1 where the scene's class is the
  model's class k (every model class must be one of the scene's).

Instance ids (``int64``, 0 = no instance) come from an instance raster given with a pair, from
the polygons of vector labels (polygon ``i`` of the file is instance ``i + 1``; where polygons
overlap, the later one wins) or from the synthetic scene's buildings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rasterio.features import rasterize
from rasterio.transform import Affine

from ..errors import ConfigError, InputError
from .sources import IGNORE, Start

__all__ = [
    "check_plane_names",
    "check_plane_values",
    "one_hot_planes",
    "plane_values",
    "rasterize_instances",
    "rasterize_planes",
]


def plane_values(source_names: Sequence[str], model_names: Sequence[str], what: str) -> npt.NDArray[np.int64]:
    """For each model class, the source's label value of the class with that name.

    Raises
    ------
    ConfigError
        If a model class is not among the source's classes.
    """
    missing = [n for n in model_names if n not in source_names]
    if missing:
        raise ConfigError(f"multi-label classes {missing} are not {what} classes {list(source_names)}; name each "
                          f"model class after one of them")
    return np.array([list(source_names).index(n) for n in model_names], dtype=np.int64)


def one_hot_planes(truth: np.ndarray, values: npt.NDArray[np.int64], nodata: int) -> npt.NDArray[np.uint8]:
    """``(K, *truth.shape)`` uint8: plane k is 1 where ``truth == values[k]``, 0 elsewhere, IGNORE at ``nodata``."""
    planes = (truth[None] == values.reshape(-1, *(1,) * truth.ndim)).astype(np.uint8)
    planes[:, truth == nodata] = IGNORE
    return planes


def check_plane_values(labels: np.ndarray, path: Path, start: Start) -> None:
    """Raise InputError unless every value of the label planes is 0, 1 or IGNORE."""
    bad = (labels > 1) & (labels != IGNORE)
    if bad.any():
        band, row, col = (int(i[0]) for i in np.nonzero(bad))
        raise InputError(
            f"{path} band {band + 1} holds {int(labels[bad][0])} near row {start[0] + row} col {start[1] + col}: a "
            f"multi-label raster holds 0 (absent), 1 (present) or {IGNORE} (unlabelled) in each class's band"
        )


def check_plane_names(descriptions: Sequence[str], names: Sequence[str], path: Path) -> None:
    """Raise InputError when the bands are all described and the descriptions are not the class names in order."""
    described = [d.strip().lower() for d in descriptions]
    if all(described) and described != [n.lower() for n in names]:
        raise InputError(f"label raster {path} has bands {described} but the model classes are {list(names)}: band "
                         "k must hold class k; reorder the bands or the classes")


def _burn(shapes: list[tuple[dict[str, Any], int]], shape: tuple[int, ...], transform: Affine, dtype: str,
          all_touched: bool) -> np.ndarray:
    return rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype=dtype, all_touched=all_touched)


def rasterize_planes(geometries: Sequence[dict[str, Any]], values: np.ndarray, hits: np.ndarray, num_classes: int,
                     shape: tuple[int, ...], transform: Affine, all_touched: bool) -> npt.NDArray[np.uint8]:
    """Label planes ``(num_classes, *shape)`` of the polygons ``hits`` (indices), class by class.

    ``values[i]`` is polygon i's class index or IGNORE (unlabelled in every plane).
    """
    planes = np.zeros((num_classes, *shape), dtype=np.uint8)
    for k in range(num_classes):
        shapes = [(geometries[i], 1) for i in hits if int(values[i]) == k]
        if shapes:
            planes[k] = _burn(shapes, shape, transform, "uint8", all_touched)
    ignored = [(geometries[i], 1) for i in hits if int(values[i]) == IGNORE]
    if ignored:
        planes[:, _burn(ignored, shape, transform, "uint8", all_touched) > 0] = IGNORE
    return planes


def rasterize_instances(geometries: Sequence[dict[str, Any]], hits: np.ndarray, shape: tuple[int, ...],
                        transform: Affine, all_touched: bool) -> npt.NDArray[np.int64]:
    """Instance ids ``shape`` int64: polygon ``i`` burnt as ``i + 1`` (later polygons over earlier ones)."""
    if hits.size == 0:
        return np.zeros(shape, dtype=np.int64)
    if int(hits.max()) + 1 > np.iinfo(np.int32).max:
        raise InputError(f"{int(hits.max()) + 1} polygons are more instances than an int32 raster holds")
    shapes = [(geometries[i], int(i) + 1) for i in np.sort(hits)]
    return _burn(shapes, shape, transform, "int32", all_touched).astype(np.int64)
