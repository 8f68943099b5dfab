"""Object F1 of thing classes over whole sources, with objects whole across chunk seams.

:func:`~segflow.training.evaluation.evaluate_sliding_window` scores a source chunk by chunk; an
object cut by a chunk border must still count once. :class:`SourceObjects` keeps, per thing
class, two small maps of the source (prediction and truth: 1 = the class, 0 = scored background,
255 = not scored) in temporary zarr stores, labels their connected components (face
connectivity, as :func:`segflow.metrics.instances_from_mask`) with ids global across seams
(:func:`segflow.instances.label_instances`) and matches prediction to truth objects one to one
at IoU >= 0.5 with the project's seam-safe matcher (:mod:`segflow._object_match`, the one
``segflow eval`` uses). Only scored pixels count: where the truth is
:data:`~segflow.training.sources.IGNORE` neither map has an object; a prediction of 255 (no
prediction) is no object, so a truth object there is missed.

Labels are class ids ``(*spatial)`` or, for multi-label models, 0/1 planes ``(K, *spatial)``
(class ``k``'s objects are the regions of plane ``k``). Memory: a few chunks and the per-object
tables; the maps go to a temporary directory (under ``TMPDIR``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from .._object_match import PairCounts, match_pairs
from ..instances import label_instances
from ..metrics import ObjectScore
from ..tiling import Box, ChunkGrid
from .sources import IGNORE

__all__ = ["SourceObjects"]

_IOU = 0.5


class SourceObjects:
    """Seam-safe object counts of ``things`` over one source of ``shape``, fed chunk by chunk.

    Use as a context manager (the temporary stores are removed on exit); :meth:`add` each chunk's
    prediction and truth, then :meth:`scores`.
    """

    def __init__(self, shape: Sequence[int], chunk: int | Sequence[int], things: Sequence[int], *,
                 multilabel: bool = False) -> None:
        import zarr

        self.shape = tuple(int(s) for s in shape)
        self.grid = ChunkGrid.create(self.shape, chunk)
        self.things = tuple(int(k) for k in things)
        self.multilabel = multilabel
        self._tmp = tempfile.TemporaryDirectory(prefix="segflow-objects-")
        root = Path(self._tmp.name)
        self.maps = {(k, which): zarr.create_array(store=str(root / f"{which}{k}.zarr"), shape=self.shape,
                                                   dtype="uint8", chunks=self.grid.chunk, fill_value=IGNORE)
                     for k in self.things for which in ("pred", "truth")}
        self._root = root

    def __enter__(self) -> SourceObjects:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._tmp.cleanup()

    def _class_map(self, labels: np.ndarray, k: int, scored: np.ndarray) -> np.ndarray:
        present = labels[k] == 1 if self.multilabel else labels == k
        return np.where(scored, present, IGNORE).astype(np.uint8)

    def add(self, box: Box, pred: np.ndarray, truth: np.ndarray) -> None:
        """One chunk at ``box``: ``pred`` and ``truth`` labels (255 = no prediction / not scored)."""
        where = box.slices
        for k in self.things:
            scored = (truth[k] if self.multilabel else truth) != IGNORE
            self.maps[(k, "pred")][where] = self._class_map(pred, k, scored)
            self.maps[(k, "truth")][where] = self._class_map(truth, k, scored)

    def scores(self) -> dict[int, ObjectScore]:
        """Per thing class: true positives, false positives and false negatives at IoU >= 0.5."""
        import zarr

        out = {}
        for k in self.things:
            ids, found = [], []
            for which in ("pred", "truth"):
                target = zarr.create_array(store=str(self._root / f"{which}{k}-ids.zarr"), shape=self.shape,
                                           dtype="uint32", chunks=self.grid.chunk, fill_value=0)
                found.append(label_instances(self.maps[(k, which)], target, self.grid.chunk, [1], connectivity=1))
                ids.append(target)
            counts = PairCounts(len(found[1]))
            for _, box in self.grid:
                counts.add_ids(np.asarray(ids[0][box.slices]), np.asarray(ids[1][box.slices]))
            matched, _, _ = match_pairs(counts, found[0].class_id, found[0].voxels, found[1].class_id,
                                        found[1].voxels, _IOU)
            tp = len(matched)
            out[k] = ObjectScore.from_counts(tp, len(found[0]) - tp, len(found[1]) - tp)
        return out
