"""Read back what was written before it is published: every array chunk, every raster tile and overview.

A write that failed without saying so (a full disk under a multi-threaded GDAL writer, a
flaky network filesystem) leaves a file that opens but whose tiles cannot be decoded or hold
other values. Publishing it would replace a good earlier output with a damaged one, so each
writer's result is read back here first, by bounded strips (memory does not grow with the
scene), and compared with the store it was made from.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

from ..errors import OutputError
from ..tiling import Box
from .mask_store import MaskStore

__all__ = ["verify_label_raster", "verify_store"]

_ROWS = 2048


def _damaged(what: Path, detail: str) -> OutputError:
    return OutputError(f"{what} does not read back as written ({detail}); the disk may be full or failing: "
                       "check the filesystem and run again (nothing was published)")


def verify_store(store: MaskStore) -> None:
    """Decode every chunk of every array in ``store``; raise :class:`OutputError` naming the first bad one."""
    mask = ("present", store.present) if store.multilabel else ("labels", store.labels)
    arrays = [mask] + ([("scores", store.scores)] if store.scores is not None else [])
    for name, array in arrays:
        shards = getattr(array, "shards", None) or array.chunks
        spatial = shards[-len(store.shape):]
        ranges = [range(0, n, c) for n, c in zip(store.shape, spatial, strict=True)]
        for start in itertools.product(*ranges):
            box = Box(start, tuple(min(a + c, n) for a, c, n in zip(start, spatial, store.shape, strict=True)))
            try:
                np.asarray(array[(Ellipsis, *box.slices)])  # type: ignore[index]
            except Exception as exc:  # zarr and its codecs raise many types for damaged chunks
                raise _damaged(store.path / name, f"chunk at {list(start)}: {str(exc).strip()[:160]}") from None


def verify_label_raster(path: Path, store: MaskStore, *, rows: int = _ROWS) -> None:
    """Check that the raster at ``path`` equals the store's labels and that its overviews decode.

    One band of labels; for a multi-label store one band per class, its ``present`` planes.
    """
    height, width = store.shape
    bands = store.present.shape[0] if store.multilabel else 1
    if store.multilabel:
        rows = max(1, rows // bands)
    try:
        with rasterio.open(path) as ds:
            if (ds.height, ds.width, ds.count) != (height, width, bands):
                raise _damaged(path, f"{ds.count} band(s) of {ds.width}x{ds.height}, expected {bands} of "
                                     f"{width}x{height}")
            for r0 in range(0, height, rows):
                r1 = min(r0 + rows, height)
                box = Box((r0, 0), (r1, width))
                window = Window(0, r0, width, r1 - r0)
                got = ds.read(window=window) if store.multilabel else ds.read(1, window=window)
                want = store.read_present(box) if store.multilabel else store.read_labels(box)
                if not np.array_equal(got, want):
                    bad = int(np.count_nonzero(got != want))
                    raise _damaged(path, f"{bad} pixels differ from mask.zarr in rows {r0}:{r1}")
            levels = len(ds.overviews(1))
        for level in range(levels):
            with rasterio.open(path, overview_level=level) as ov:
                for r0 in range(0, ov.height, rows):
                    ov.read(window=Window(0, r0, ov.width, min(rows, ov.height - r0)))
    except RasterioError as exc:
        raise _damaged(path, str(exc).strip()[:200]) from None
