"""The mask store: a zarr v3 group with ``labels`` and optional ``scores``, written chunk by chunk."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..stitch import LABEL_NODATA
from ..tiling import Box

__all__ = ["MaskStore"]

_INNER = 512  # inner chunk of a shard, for readers that want small tiles


def _chunking(chunk: Sequence[int], lead: tuple[int, ...] = ()) -> dict[str, Any]:
    """Shard = processing chunk with small inner chunks when they divide it; plain chunks otherwise.

    ``lead`` are chunk sizes of leading non-spatial axes (1 for the class axis of scores).
    """
    spatial = tuple(int(c) for c in chunk)
    if all(c % _INNER == 0 and c > _INNER for c in spatial):
        return {"shards": (*lead, *spatial), "chunks": (*lead, *(_INNER,) * len(spatial))}
    return {"chunks": (*lead, *spatial)}


class MaskStore:
    """Writes ``labels`` (uint8, spatial axes) and optionally ``scores`` (float16, K first).

    Group attributes carry the geometry (``crs`` as WKT, ``transform`` as rasterio's 6 affine
    coefficients), ``nodata``, ``class_names`` and the axis names.
    """

    def __init__(self, path: Path, shape: Sequence[int], chunk: Sequence[int], class_names: Sequence[str],
                 *, save_scores: bool, attrs: dict[str, Any]):
        self.path = path
        spatial_names = ["z", "y", "x"][-len(shape):]
        self.group = zarr.open_group(str(path), mode="w", zarr_format=3)
        self.group.attrs.update(json.loads(json.dumps({
            **attrs,
            "nodata": LABEL_NODATA,
            "class_names": list(class_names),
            "axes": "".join(spatial_names).upper(),
        })))
        self.labels = self.group.create_array(
            "labels", shape=tuple(shape), dtype="uint8", fill_value=LABEL_NODATA,
            dimension_names=spatial_names, **_chunking(chunk),
        )
        self.scores = None
        if save_scores:
            self.scores = self.group.create_array(
                "scores", shape=(len(class_names), *shape), dtype="float16", fill_value=np.nan,
                dimension_names=["class", *spatial_names], **_chunking(chunk, (1,)),
            )

    def write(self, box: Box, labels: np.ndarray, scores: np.ndarray | None = None) -> None:
        """Write one chunk of labels (and scores, ``(K, *box.shape)``)."""
        self.labels[box.slices] = labels
        if self.scores is not None and scores is not None:
            self.scores[(slice(None), *box.slices)] = scores.astype(np.float16)
