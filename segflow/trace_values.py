"""What vector tracing (:mod:`segflow.vectorize`) traces in a box: an int32 image whose connected regions of one
non-zero value are the pieces of objects.

- :func:`class_values`: the labels, nodata as 0 (an object is a connected region of one class);
- :func:`present_values`: a multi-label class plane (1 where the class is present);
- :func:`instance_values`: ``offset + instance id`` on the pixels of numbered instances, the class elsewhere,
  for the instances of ``--separate watershed`` (:func:`separated_values`) and those an instance model
  found (:func:`detected_instances`); ``offset`` (the number of classes) keeps ids apart from classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import OutputError
from .io.mask_store import MaskStore
from .labels import LABEL_NODATA
from .tiling import Box

__all__ = ["Values", "class_values", "detected_instances", "instance_values", "present_values", "separated_values"]

Values = Callable[[Box, np.ndarray], np.ndarray]
"""What to trace in a box, given its labels: an int32 image whose connected regions of one non-zero value
are the pieces (by default the labels, nodata as 0; with numbered instances, their ids)."""


def class_values(box: Box, labels: np.ndarray) -> np.ndarray:
    nodata = labels == LABEL_NODATA
    return np.where(nodata, 0, labels).astype(np.uint8) if nodata.any() else labels


def present_values(box: Box, labels: np.ndarray) -> np.ndarray:
    return (labels != LABEL_NODATA).astype(np.uint8)


def instance_values(ids: Any, offset: int, count: int | None = None) -> Values:
    """``offset + id`` where the array ``ids`` holds an instance (> 0), the class (:func:`class_values`) elsewhere;
    ``count``: the number of instances (default: the array's ``count`` attribute)."""
    count = int(ids.attrs.get("count", 0)) if count is None else count
    if count + offset >= np.iinfo(np.int32).max:
        raise OutputError(f"{count} instances: more than tracing can number; use --separate none")

    def values(box: Box, labels: np.ndarray) -> np.ndarray:
        out = class_values(box, labels).astype(np.int32)
        instance = np.asarray(ids[box.slices]).astype(np.int32)
        return np.where(instance > 0, instance + offset, out)

    return values


def separated_values(store: MaskStore, chunk: Sequence[int], kinds: Sequence[str], min_distance: float,
                     work: Any) -> Values:
    """Trace values with touching thing objects split by a watershed (:func:`segflow.postprocess.separate`,
    its arrays written into the zarr group ``work``)."""
    from .postprocess import separate

    things = [i for i, k in enumerate(kinds) if k == "thing" and i > 0]
    arrays = [work.create_array(name, shape=store.shape, dtype="uint32", chunks=tuple(chunk), fill_value=0,
                                overwrite=True) for name in ("components", "separated")]
    found = separate(store.labels, arrays[0], arrays[1], chunk, things=things, min_distance=min_distance)
    return instance_values(arrays[1], len(kinds), len(found.instances))


def detected_instances(store: MaskStore) -> tuple[Any, np.ndarray] | None:
    """The ``instances`` array and the per-instance scores of an instance model's run (:mod:`segflow.detect`),
    else None."""
    from .detect.paint import INSTANCE_SCORES, SOURCE

    if "instances" not in store.group or store.group["instances"].attrs.get("source") != SOURCE:
        return None
    scores: Any = store.group[INSTANCE_SCORES]
    return store.group["instances"], np.asarray(scores[...], dtype=np.float64)
