"""What dask asks an array-like reader for, turned into one contiguous read and the picking inside it.

dask hands the slicing of an array built with ``da.from_array`` on to the reader (it fuses it into the
read): besides plain chunk slices a reader gets indices (``scene.data[3]``) and steps (``[:, ::4]``);
today's dask applies reversed ranges and lists itself after the read, but nothing promises it.
:func:`bounding_read` gives, per axis, the contiguous range to read and the index that picks the request
out of what was read, for any of these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["bounding_read"]


def _relative(span: range, start: int) -> slice:
    """The slice that picks ``span`` out of an array whose index 0 is ``start``."""
    stop = span.stop - start
    return slice(span.start - start, stop if stop >= 0 else None, span.step)


def bounding_read(key: Any, shape: Sequence[int]) -> tuple[list[range], tuple[Any, ...]]:
    """For ``key`` (per axis a slice of any step or an index, fewer axes than ``shape`` allowed) over an
    array of ``shape``: the range of each axis to read (step 1; empty when the key selects nothing on that
    axis) and the index that, applied to the block read, gives ``array[key]`` (an index drops its axis).
    """
    key = key if isinstance(key, tuple) else (key,)
    key = key + (slice(None),) * (len(shape) - len(key))
    spans: list[range] = []
    local: list[Any] = []
    for k, n in zip(key, shape, strict=True):
        pick = range(n)[k]
        if isinstance(pick, int):
            spans.append(range(pick, pick + 1))
            local.append(0)
        elif not pick:
            spans.append(range(0))
            local.append(slice(0, 0))
        else:
            low, high = sorted((pick[0], pick[-1]))
            spans.append(range(low, high + 1))
            local.append(_relative(pick, low))
    return spans, tuple(local)
