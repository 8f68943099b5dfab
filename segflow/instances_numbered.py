"""Measures of instances that are numbered already (an instance model's merged detections, :mod:`segflow.detect`).

The same measures as :func:`segflow.instances.label_instances` gives for connected components, taken chunk by
chunk from an id array instead of labelling one: each chunk's ids are measured as that module's pieces, and
the pieces of one id in several chunks are merged by its seam-merging step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import InputError
from .instances import Instances, _measure, _merge, _Pieces, _read, reader_for
from .tiling import ChunkGrid

__all__ = ["measure_instances"]


def measure_instances(ids: Any, labels: Any, chunk: int | Sequence[int], *,
                      values: Mapping[str, Any] | None = None) -> Instances:
    """The measures of instances that are already numbered: ``ids`` (array-like or :data:`Reader`, 0 = none)
    holding ids ``1 .. M`` in raster order of each instance's first voxel (as :func:`label_instances` numbers
    them, e.g. the merged detections of an instance model), ``labels`` their classes. Row ``k`` of the
    result is id ``k + 1``; ``values`` as for :func:`label_instances`. Memory is bounded by ``chunk``.

    Raises
    ------
    InputError
        If the ids are not ``1 .. M`` in that order, or one id holds pixels of two classes.
    """
    read_ids, read_labels = reader_for(ids), reader_for(labels)
    shape = tuple(int(s) for s in ids.shape)
    grid = ChunkGrid.create(shape, chunk)
    sources = {name: reader_for(src) for name, src in (values or {}).items()}
    parts: list[_Pieces] = []
    owners: list[np.ndarray] = []  # the given id of each piece
    for _, box in grid:
        given = _read(read_ids, box, "ids").astype(np.int64)
        present, local = np.unique(given, return_inverse=True)
        local = local.reshape(given.shape).astype(np.int64)
        if present[0] != 0:
            local += 1
        else:
            present = present[1:]
        if not len(present):
            continue
        classes = _read(read_labels, box, "labels").ravel()
        flat = local.ravel()
        nz = np.flatnonzero(flat)
        class_id = np.zeros(len(present), np.int64)
        class_id[flat[nz] - 1] = classes[nz]
        mixed = np.bincount(flat[nz] - 1, weights=classes[nz] != class_id[flat[nz] - 1], minlength=len(present)) > 0
        if mixed.any():
            raise InputError(f"instance {int(present[np.flatnonzero(mixed)[0]])} holds pixels of two classes near "
                             f"{box.start}; the ids and labels are not of one run")
        data = {name: _read(r, box, f"value source {name!r}") for name, r in sources.items()}
        parts.append(_measure(local, class_id, box, shape, data))
        owners.append(present)
    pieces = _Pieces.concat(parts, len(shape), list(sources))
    owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    order = np.argsort(owner, kind="stable")
    same = owner[order[1:]] == owner[order[:-1]]
    pairs = np.stack([order[:-1][same] + 1, order[1:][same] + 1])  # (2, 0) for fewer than two pieces
    lookup, instances = _merge(pieces, pairs)
    if not np.array_equal(lookup[1:], owner):
        raise InputError(f"the instance ids are not 1..{len(instances)} in raster order of first pixel; number them "
                         "as label_instances does")
    return instances
