"""Parts that wait long for their merge go to disk, so memory follows a line of chunks, not a plane.

Merges run in :func:`~segflow.engine.execute.merge_order`. A part handed to the next chunk
along the fastest axis, or to the next line of chunks, is merged soon after it is made; a part
handed to the next *plane* of chunks of a volume waits until the whole current plane is merged,
and those parts together hold the overlap of every window along a cross-section of the volume
(``classes × 4`` bytes per voxel, windows overlapping across it counted once each): 0.9 GB for a
512 × 512 cross-section with ten classes and 64³ windows. On the threaded scheduler such parts
are written to the run's staging folder and read back (and deleted) by their merge. Worker
processes and clusters leave this to dask.distributed, which spills to disk by its own
memory limits.
"""

from __future__ import annotations

import math
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..stitch import Part, Piece
from ..tiling import ChunkGrid, WindowGrid
from .plan import merge_axes

__all__ = ["SPILL_FOLDER", "Spilled", "clear", "far_apart", "load", "spill_bytes", "write"]

SPILL_FOLDER = "parts"  # inside the run's staging folder


@dataclass(frozen=True)
class Spilled:
    """A part on disk: ``path`` holds it until its merge reads it."""

    path: str
    nbytes: int


def far_apart(source: int, target: int, line: int) -> bool:
    """Whether a part from the chunk at merge position ``source`` to the one at ``target`` waits
    for more than one line of ``line`` chunks (plus the diagonal neighbour) to be merged."""
    return target - source > line + 1


def write(part: Part, path: Path) -> Spilled:
    """Write ``part`` to ``path`` (raw float32 arrays; its validity mask too) and return the handle."""
    pieces = [(p.window, p.box, p.offset, None if p.weighted is None else p.weighted.cpu().numpy())
              for p in part.pieces]
    nbytes = sum(a.nbytes for *_, a in pieces if a is not None)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump((pieces, part.has_valid, part.valid), f)
    return Spilled(str(path), nbytes)


def load(spilled: Spilled) -> Part:
    """Read a spilled part back and delete its file."""
    path = Path(spilled.path)
    with open(path, "rb") as f:
        pieces, has_valid, valid = pickle.load(f)  # our own file, written by write()
    path.unlink()
    return Part(tuple(Piece(w, box, offset, None if a is None else torch.from_numpy(a))
                      for w, box, offset, a in pieces), has_valid, valid)


def clear(folder: Path) -> None:
    """Remove a spill folder left by an interrupted run (its parts are recomputed)."""
    shutil.rmtree(folder, ignore_errors=True)


def spill_bytes(grid: WindowGrid, chunks: ChunkGrid, num_classes: int) -> int:
    """Roughly the most bytes on disk at once: the overhang of one plane of windows into the next.

    Zero when the run spills nothing: fewer than three axes, or the next plane of chunks no further
    ahead in merge order than :func:`far_apart` allows.
    """
    counts = chunks.counts
    order = merge_axes(counts)  # slowest first: the next plane is the product of the other counts ahead
    if len(order) < 3 or not far_apart(0, math.prod(counts[a] for a in order[1:]), counts[order[-1]]):
        return 0
    slow = order[0]
    cross = [a for a in range(grid.ndim) if a != slow]
    overlap = [math.ceil(grid.tile[a] / grid.stride[a]) for a in cross]
    voxels = math.prod(grid.shape[a] for a in cross) * min(grid.tile[slow], chunks.chunk[slow])
    return int(voxels * math.prod(overlap) * num_classes * np.dtype(np.float32).itemsize)
