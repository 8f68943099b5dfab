"""The label value conventions every reader and writer of segflow's masks shares."""

from __future__ import annotations

__all__ = ["LABEL_NODATA", "MAX_CLASSES"]

LABEL_NODATA = 255
"""Label of a pixel with no prediction (nodata input or not covered): uint8 labels, classes 0..254."""

MAX_CLASSES = LABEL_NODATA
"""At most this many classes fit a uint8 label with :data:`LABEL_NODATA` kept free."""
