"""Write merged instances into a run's ``mask.zarr``: labels, instance ids and per-instance scores.

Where instances overlap, the higher score takes the pixel (ties: the one merged first), and an instance
more than half of whose pixels are taken by higher-scoring ones is dropped (what is left of it is a
sliver of a duplicate), as Detectron2's panoptic fusion of Mask R-CNN outputs does (``overlap_threshold``
0.5). Per chunk of the store:

- ``labels``: the class of the instance holding the pixel, 0 (background) elsewhere, the label nodata
  where the scene is nodata;
- ``instances`` (uint32, created here): the instance id, 0 elsewhere. Ids are ``1 .. M`` in raster
  order of each instance's first pixel, as :func:`segflow.instances.label_instances` numbers connected
  components, so the instances table, the polygons and the id raster agree; an instance that lost all
  its pixels to higher-scoring ones gets no id;
- ``instance_scores`` (float32, ``(M,)``, created here): the score of instance ``id`` at index ``id - 1``;
- ``scores`` (when the store keeps them): channel ``k > 0`` the score of the instance where it is of
  class ``k``, channel 0 one minus it (1 where there is no instance).

Memory: the instances' cropped masks (a byte per pixel of each object) and one chunk of arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..io.mask_store import MaskStore
from ..labels import LABEL_NODATA
from ..tiling import Box, ChunkGrid
from .merge import Instance

__all__ = ["INSTANCE_SCORES", "MAX_TAKEN", "SOURCE", "paint_instances", "resolve_overlaps"]

SOURCE = "detector"  # the ``source`` attribute of the ``instances`` array a detector run writes
INSTANCE_SCORES = "instance_scores"

ValidReader = Callable[[Box], np.ndarray | None]
MAX_TAKEN = 0.5  # the largest fraction of an instance's pixels higher-scoring instances may take
_CELL = 256  # the spatial index's cell, pixels


def resolve_overlaps(instances: Sequence[Instance], max_taken: float = MAX_TAKEN) -> list[Instance]:
    """The instances to keep, by decreasing score (ties: input order): each one whose pixels are taken by
    higher-scoring kept ones for more than ``max_taken`` of its own is dropped. Their masks are not cut: painting
    by score gives each kept instance what is left to it."""
    order = sorted(range(len(instances)), key=lambda n: -instances[n].score)
    kept: list[Instance] = []
    cells: dict[tuple[int, int], list[int]] = {}
    for n in order:
        inst = instances[n]
        box = inst.box
        span = [range(box.start[a] // _CELL, (box.stop[a] - 1) // _CELL + 1) for a in range(2)]
        near = {k for r in span[0] for c in span[1] for k in cells.get((r, c), [])}
        taken = np.zeros(inst.mask.shape, dtype=bool)
        for k in sorted(near):
            part = kept[k].box.intersect(box)
            if part is not None:
                taken[part.relative_to(box)] |= kept[k].mask[part.relative_to(kept[k].box)]
        area = int(np.count_nonzero(inst.mask))
        if area == 0 or np.count_nonzero(inst.mask & taken) > max_taken * area:
            continue
        for r in span[0]:
            for c in span[1]:
                cells.setdefault((r, c), []).append(len(kept))
        kept.append(inst)
    return kept


def _buckets(instances: Sequence[Instance], grid: ChunkGrid) -> dict[tuple[int, ...], list[int]]:
    out: dict[tuple[int, ...], list[int]] = {}
    for n, inst in enumerate(instances):
        for index in grid.indices_touching(inst.box):
            out.setdefault(tuple(index), []).append(n)
    return out


def paint_instances(store: MaskStore, instances: Sequence[Instance], valid: ValidReader, *,
                    things: Sequence[str], on_chunk: Callable[[], None] | None = None) -> int:
    """Write ``instances`` into ``store`` (module docstring); ``valid(box)`` gives the scene's validity over a
    chunk (None: all valid). Returns the number of instance ids given."""
    grid = ChunkGrid.create(store.shape, store.spatial_chunk)
    instances = resolve_overlaps(instances)
    order = list(range(len(instances)))  # by decreasing score already
    rank = np.empty(len(instances), dtype=np.int64)
    rank[order] = np.arange(len(instances))  # provisional id - 1: 0 = the highest score
    labels_of = np.array([0, *(instances[n].label for n in order)], dtype=np.uint8)
    score_of = np.array([0.0, *(instances[n].score for n in order)], dtype=np.float32)
    ids = store.group.create_array("instances", shape=store.shape, dtype="uint32", chunks=store.labels.chunks,
                                   fill_value=0, dimension_names=["y", "x"], overwrite=True)
    first = np.full(len(instances) + 1, np.iinfo(np.int64).max, dtype=np.int64)
    width = store.shape[1]
    buckets = _buckets(instances, grid)
    for index, box in grid:
        local = np.zeros(box.shape, dtype=np.uint32)
        for n in sorted(buckets.get(tuple(index), []), key=lambda n: -rank[n]):  # lowest score first
            inst = instances[n]
            part = inst.box.intersect(box)
            assert part is not None
            local[part.relative_to(box)][inst.mask[part.relative_to(inst.box)]] = rank[n] + 1
        ok = valid(box)
        if ok is not None:
            local[~ok] = 0
        labels = labels_of[local]
        if ok is not None:
            labels[~ok] = LABEL_NODATA
        scores = None
        if store.scores is not None:
            scores = np.zeros((store.scores.shape[0], *box.shape), dtype=np.float32)
            held = score_of[local]
            scores[0] = 1.0 - held
            for k in range(1, len(scores)):
                scores[k] = np.where(labels == k, held, 0.0)
        store.write(box, labels, scores, ok)
        ids[box.slices] = local
        nz = np.flatnonzero(local)
        if len(nz):
            rows, cols = np.divmod(nz, box.shape[1])
            np.minimum.at(first, local.ravel()[nz], (rows + box.start[0]) * width + cols + box.start[1])
        store.mark_done(tuple(index), {"index": list(index), "box": [list(box.start), list(box.stop)],
                                       "valid_pixels": int(box.size if ok is None else np.count_nonzero(ok))})
        if on_chunk is not None:
            on_chunk()
    return _renumber(store, ids, grid, first, score_of, things)


def _renumber(store: MaskStore, ids: Any, grid: ChunkGrid, first: np.ndarray, score_of: np.ndarray,
              things: Sequence[str]) -> int:
    """Provisional ids (by score) → final ids (by first pixel); returns the count."""
    present = np.flatnonzero(first[1:] < np.iinfo(np.int64).max) + 1
    present = present[np.argsort(first[present], kind="stable")]
    lookup = np.zeros(len(first), dtype=np.uint32)
    lookup[present] = np.arange(1, len(present) + 1, dtype=np.uint32)
    for _, box in grid:
        ids[box.slices] = lookup[np.asarray(ids[box.slices])]
    scores = store.group.create_array(INSTANCE_SCORES, shape=(len(present),), dtype="float32",
                                      chunks=(max(1, min(len(present), 1 << 20)),), fill_value=0.0, overwrite=True)
    if len(present):
        scores[:] = score_of[present]
    ids.attrs.update({"source": SOURCE, "things": list(things), "count": len(present),
                      "scores": INSTANCE_SCORES})
    return len(present)
