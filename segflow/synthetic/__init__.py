"""Deterministic synthetic multispectral scenes with matching ground truth.

The scene is an infinite, seeded landscape at 10 m pixels: irregular lakes and rivers,
forest and crop fields, bare ground, and rectangular buildings (some of them touching).
Every pixel is a pure function of its *global* ``(row, col)`` coordinates and the seed:
per-pixel noise and per-cell decisions come from a counter-based splitmix64 hash of integer
coordinates, natural shapes from smooth value noise on coarse global lattices. There is no
global random state, so any block equals the same region cut out of a larger block, and a
scene written block by block does not depend on the block size.

Axis order is always ``(band, row, col)`` for images and ``(row, col)`` for truth; image
values are surface reflectance multiplied by 10000 (``uint16``), truth values are indices
into :data:`CLASSES` (``uint8``), with :data:`TRUTH_NODATA` where the image is nodata.

The generator is split by concern: :mod:`~segflow.synthetic.noise` (hashing, value noise),
:mod:`~segflow.synthetic.layout` (water, fields, buildings), :mod:`~segflow.synthetic.scene`
(classes, spectra, :func:`synthesize_block`) and :mod:`~segflow.synthetic.writer`
(:func:`write_synthetic_scene`); their public names are re-exported here. Synthetic CT-like
volumes with truth are in :mod:`segflow.synthetic.volume`.
"""

from __future__ import annotations

from .scene import BANDS, CLASSES, TRUTH_NODATA, synthesize_block, synthesize_instances
from .writer import SyntheticScene, write_synthetic_scene

__all__ = [
    "BANDS",
    "CLASSES",
    "TRUTH_NODATA",
    "SyntheticScene",
    "synthesize_block",
    "synthesize_instances",
    "write_synthetic_scene",
]
