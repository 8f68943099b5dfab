"""``--opening R`` / ``--closing R``: morphological smoothing of a finished raster store's labels.

Every class but 0 is closed then opened with a disk of the given radius in pixels
(:func:`segflow.postprocess.morphology`: chunk by chunk with an exact halo, so the result equals
the whole-array one; a pixel its class loses goes to the first class that claims it, else to 0).
Every output (``labels.tif``, polygons, panoptic ids) then shows the smoothed labels.

The raw labels are copied once to the store's ``labels_raw`` array (marked complete only after the
copy), and the smoothing always reads them: a pass interrupted anywhere is simply run again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .io.mask_store import MaskStore
from .postprocess import morphology
from .tiling import ChunkGrid

__all__ = ["RAW", "smooth_store"]

RAW = "labels_raw"


def _raw_labels(store: MaskStore) -> Any:
    group = store.group
    if RAW in group and group[RAW].attrs.get("complete"):
        return group[RAW]
    labels = store.labels
    raw: Any = group.create_array(RAW, shape=labels.shape, dtype="uint8", chunks=labels.chunks,
                                  fill_value=int(labels.fill_value), overwrite=True)
    for _, box in ChunkGrid.create(store.shape, getattr(labels, "shards", None) or labels.chunks):
        raw[box.slices] = np.asarray(labels[box.slices])
    raw.attrs["complete"] = True
    return raw


def smooth_store(store: MaskStore, num_classes: int, *, opening: int, closing: int) -> None:
    """Rewrite the store's labels smoothed (see the module docstring)."""
    if not opening and not closing:
        return
    raw = _raw_labels(store)
    chunk = getattr(store.labels, "shards", None) or store.labels.chunks
    morphology(raw, store.labels, chunk, classes=list(range(1, num_classes)), opening=opening, closing=closing)
