"""``--crf``: the dense CRF (:mod:`segflow.crf`) as a pass over a finished raster store.

After the engine has blended every chunk, the store holds class probabilities (``scores``, float16,
NaN on nodata). This pass refines them with the mean-field CRF over the scene's model bands, box by
box with the CRF's halo (so the result equals a whole-scene CRF, bit for bit on the CPU), and
rewrites ``labels`` as the arg-max of the refined probabilities. It reads only ``scores`` and the
scene and writes only ``labels``, so running it again after an interruption gives the same labels.

The image is scaled for the colour kernel by each band's 2nd–98th percentiles over a sample of the
scene (up to 16 boxes of 128² spread over it): ``colour_sigma`` is a fraction of a band's range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

from .crf import CRFParams, band_scaling, refine_box
from .errors import ConfigError
from .io.mask_store import MaskStore
from .labels import LABEL_NODATA
from .scene import Scene
from .tiling import Box, ChunkGrid

__all__ = ["BOX", "crf_fingerprint", "refine_store"]

BOX = 512  # pixels a side refined at a time: its pair weights stay in the CRF's cache (measured faster)
_SAMPLE = 128


def crf_fingerprint(params: CRFParams | None) -> dict[str, Any] | None:
    return None if params is None else asdict(params)


def _sample(scene: Scene) -> np.ndarray:
    """Up to 16 boxes of 128² on a 4 × 4 grid over the scene, valid pixels of the model bands ``(C, N)``."""
    height, width = scene.spatial_shape
    rows = sorted({min(max(0, int(height * (k + 0.5) / 4) - _SAMPLE // 2), max(0, height - _SAMPLE)) for k in range(4)})
    cols = sorted({min(max(0, int(width * (k + 0.5) / 4) - _SAMPLE // 2), max(0, width - _SAMPLE)) for k in range(4)})
    parts = []
    for r in rows:
        for c in cols:
            data, valid = scene.read(Box((r, c), (min(r + _SAMPLE, height), min(c + _SAMPLE, width))))
            flat = data.reshape(data.shape[0], -1).astype(np.float64)
            parts.append(flat if valid is None else flat[:, valid.ravel()])
    sample = np.concatenate(parts, axis=1)
    if sample.shape[1] == 0:
        raise ConfigError("--crf found no valid pixel in its sample of the scene; run without --crf")
    return sample


def refine_store(scene: Scene, store: MaskStore, params: CRFParams, device: str,
                 on_box: Callable[[], None] | None = None) -> None:
    """Rewrite the store's labels from its CRF-refined scores (see the module docstring)."""
    if len(store.shape) != 2 or store.scores is None:
        raise ConfigError("--crf refines the class probabilities of a 2D raster run (scores are kept for it)")
    scaling = band_scaling(_sample(scene))
    scores = store.scores

    def read(outer: Box) -> tuple[np.ndarray, np.ndarray]:
        data, valid = scene.read(outer)
        image = scaling.apply(np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0))
        if valid is not None:
            image[:, ~valid] = 0.0
        return image, np.asarray(scores[(slice(None), *outer.slices)], dtype=np.float32)

    for _, box in ChunkGrid.create(store.shape, BOX):
        refined = refine_box(read, box, store.shape, params, device)
        valid = np.isfinite(refined).all(axis=0)
        labels = np.argmax(np.nan_to_num(refined, nan=-1.0), axis=0).astype(np.uint8)
        labels[~valid] = LABEL_NODATA
        store.labels[box.slices] = labels
        if on_box is not None:
            on_box()
