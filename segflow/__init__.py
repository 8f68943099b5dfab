"""segflow: batch segmentation of images too large to hold in memory.

The data path, one module per stage::

    scene (segflow.scene, segflow.io) -> window grid (segflow.tiling) -> predictor (segflow.predict)
    -> blended chunks (segflow.stitch) -> labels and exports (segflow.io) ; orchestrated by segflow.tile_infer
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
