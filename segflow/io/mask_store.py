"""The mask store: the run's source of truth, written chunk by chunk and read by every sink.

Layout of ``mask.zarr`` (zarr v3 group), written and read by this module alone (except ``instances``):

- ``labels``: uint8 over the spatial axes, :data:`~segflow.labels.LABEL_NODATA` where no
  prediction; sharded so that one processing chunk is one shard (inner chunks of 512).
- ``present`` instead of ``labels`` for a multi-label model (classes that may overlap, attribute
  ``label_kind`` = ``multilabel``): uint8 ``(K, *spatial)``, 1 where class k is present (its blended
  probability >= ``thresholds[k]``), 0 where absent, :data:`~segflow.labels.LABEL_NODATA` where no
  prediction (in every plane); chunked like ``scores`` (one class plane of one processing chunk per
  shard), so a chunk costs K bytes per pixel. Such a store has no ``labels`` array: a reader that
  needs one label per pixel gets a :class:`~segflow.errors.ConfigError` from :attr:`MaskStore.labels`.
- ``scores`` (optional): float16 ``(K, *spatial)``, NaN exactly where labels are nodata.
- ``instances`` (when the model has "thing" classes; added after the chunks, in the staging
  folder, by :class:`~segflow.io.instances_sink.InstancesSink`): uint32 over the spatial axes,
  0 = no instance, else the ``id`` of a row of ``instances.csv``; its own chunking (the
  labelling chunk), attributes ``things``, ``connectivity``, ``count``, ``table``.
- group attributes: geometry (``crs`` WKT, ``transform``; ``gcps``/``gcp_crs``/``rpcs``),
  ``nodata``, ``class_names``, ``axes``, ``chunk`` (processing chunk), ``run_fingerprint`` and
  ``label_kind`` (``single``: ``labels``; ``multilabel``: ``present`` and ``thresholds``; stores
  written before this attribute existed are ``single``).
- ``.segflow-done/<i>_<j>.json``: a completion record per finished processing chunk, written
  atomically after the chunk's arrays. A chunk without a record is recomputed on resume.

Each processing chunk is exactly one shard (or plain chunk) of each array, so chunk tasks in
different processes never write the same file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import ConfigError, InputError
from ..labels import LABEL_NODATA
from ..tiling import Box
from .atomic import atomic_write_text

__all__ = ["DONE_DIR", "MULTILABEL", "MaskStore"]

_INNER = 512  # inner chunk of a shard, for readers that want small tiles
DONE_DIR = ".segflow-done"
MULTILABEL = "multilabel"  # the ``label_kind`` attribute of a store with per-class ``present`` planes
Index = tuple[int, ...]


def _chunking(chunk: Sequence[int], lead: tuple[int, ...] = ()) -> dict[str, Any]:
    """Shard = processing chunk with small inner chunks when they divide it; plain chunks otherwise.

    ``lead`` are chunk sizes of leading non-spatial axes (1 for the class axis of scores).
    """
    spatial = tuple(int(c) for c in chunk)
    if all(c % _INNER == 0 and c > _INNER for c in spatial):
        return {"shards": (*lead, *spatial), "chunks": (*lead, *(_INNER,) * len(spatial))}
    return {"chunks": (*lead, *spatial)}


def _record_name(index: Index) -> str:
    return "_".join(str(i) for i in index) + ".json"


class MaskStore:
    """A ``mask.zarr`` store: create it with :meth:`create`, open an existing one with :meth:`open`."""

    def __init__(self, path: Path, group: zarr.Group):
        self.path = Path(path)
        self.group = group

    # ------------------------------------------------------------------ create / open

    @classmethod
    def create(cls, path: Path, shape: Sequence[int], chunk: Sequence[int], class_names: Sequence[str], *,
               save_scores: bool, attrs: dict[str, Any], thresholds: Sequence[float] | None = None) -> MaskStore:
        """A new, empty store (anything at ``path`` is replaced).

        ``thresholds`` (one per class) makes a multi-label store: ``present`` planes instead of ``labels``.
        """
        spatial_names = ["z", "y", "x"][-len(shape):]
        if thresholds is not None and len(thresholds) != len(class_names):
            raise ValueError(f"{len(thresholds)} thresholds for {len(class_names)} classes")
        kind = {"label_kind": "single"} if thresholds is None else {
            "label_kind": MULTILABEL, "thresholds": [float(t) for t in thresholds]}
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        group.attrs.update(json.loads(json.dumps({
            **attrs,
            "nodata": LABEL_NODATA,
            "class_names": list(class_names),
            "axes": "".join(spatial_names).upper(),
            "chunk": [int(c) for c in chunk],
            **kind,
        })))
        if thresholds is None:
            group.create_array("labels", shape=tuple(shape), dtype="uint8", fill_value=LABEL_NODATA,
                               dimension_names=spatial_names, **_chunking(chunk))
        else:
            group.create_array("present", shape=(len(class_names), *shape), dtype="uint8", fill_value=LABEL_NODATA,
                               dimension_names=["class", *spatial_names], **_chunking(chunk, (1,)))
        if save_scores:
            group.create_array("scores", shape=(len(class_names), *shape), dtype="float16", fill_value=np.nan,
                               dimension_names=["class", *spatial_names], **_chunking(chunk, (1,)))
        (Path(path) / DONE_DIR).mkdir()
        return cls(Path(path), group)

    @classmethod
    def open(cls, path: Path, mode: str = "r") -> MaskStore:
        """An existing store; ``mode`` ``"r"`` or ``"r+"`` (to add chunks)."""
        try:
            group = zarr.open_group(str(path), mode=mode)  # type: ignore[arg-type]
            group["present" if group.attrs.get("label_kind") == MULTILABEL else "labels"]
        except Exception as exc:  # zarr raises many types for unreadable stores
            raise InputError(f"{path} is not a segflow mask store ({str(exc).strip()[:200]})") from None
        return cls(Path(path), group)

    # ------------------------------------------------------------------ properties

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @cached_property
    def multilabel(self) -> bool:
        """Whether the store holds per-class ``present`` planes (a multi-label model) instead of ``labels``."""
        return self.group.attrs.get("label_kind") == MULTILABEL

    @property
    def thresholds(self) -> tuple[float, ...] | None:
        """The per-class thresholds of a multi-label store; None for a single-label one."""
        given: Any = self.group.attrs.get("thresholds") if self.multilabel else None
        return None if given is None else tuple(float(t) for t in given)

    @cached_property
    def labels(self) -> zarr.Array:
        """The ``labels`` array; a multi-label store has none (:class:`ConfigError`, naming what to use instead)."""
        if self.multilabel:
            raise ConfigError(f"{self.path} holds multi-label masks (classes may overlap: one 0/1 plane per class in "
                              "its 'present' array), which this step cannot show as one label per pixel; use the "
                              "per-class bands of labels.tif or the per-class polygons of --vectorize")
        return self.group["labels"]  # type: ignore[return-value]

    @cached_property
    def present(self) -> zarr.Array:
        """The ``(K, *spatial)`` ``present`` planes of a multi-label store (0 absent, 1 present, 255 nodata)."""
        if not self.multilabel:
            raise ConfigError(f"{self.path} holds single labels (one class per pixel), not multi-label planes")
        return self.group["present"]  # type: ignore[return-value]

    @property
    def _mask(self) -> zarr.Array:
        return self.present if self.multilabel else self.labels

    @cached_property
    def scores(self) -> zarr.Array | None:
        return self.group["scores"] if "scores" in self.group else None  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, ...]:
        """The spatial shape (``(Y, X)`` or ``(Z, Y, X)``), whichever the kind of store."""
        mask = self._mask
        return tuple(int(s) for s in mask.shape[1:]) if self.multilabel else tuple(int(s) for s in mask.shape)

    @property
    def spatial_chunk(self) -> tuple[int, ...]:
        """The spatial shape of one shard (one processing chunk), or of one chunk when not sharded."""
        mask = self._mask
        blocks = getattr(mask, "shards", None) or mask.chunks
        return tuple(int(c) for c in blocks[-len(self.shape):])

    @property
    def fingerprint(self) -> str | None:
        return self.group.attrs.get("run_fingerprint")  # type: ignore[return-value]

    # ------------------------------------------------------------------ chunks

    def write(self, box: Box, labels: np.ndarray, scores: np.ndarray | None = None,
              valid: np.ndarray | None = None) -> None:
        """Write one chunk of labels and, when the store keeps them, scores ``(K, *box.shape)``.

        ``labels`` are ``box.shape`` class ids, or for a multi-label store its ``(K, *box.shape)``
        planes. Scores are stored as float16 and set to NaN where ``valid`` is False.
        """
        if self.multilabel:
            if labels.shape != (self.present.shape[0], *box.shape):  # never broadcast one label map to every plane
                raise ValueError(f"a multi-label store takes planes of shape {(self.present.shape[0], *box.shape)} "
                                 f"for {box}, got {labels.shape}")
            self.present[(slice(None), *box.slices)] = labels
        else:
            if labels.shape != box.shape:  # zarr would take a larger array silently, cut to the box
                raise ValueError(f"labels of shape {labels.shape} for {box}; expected {box.shape}")
            self.labels[box.slices] = labels
        if self.scores is not None and scores is not None:
            if scores.shape != (self.scores.shape[0], *box.shape):
                raise ValueError(f"scores of shape {scores.shape} for {box}; expected "
                                 f"{(self.scores.shape[0], *box.shape)}")
            out = scores.astype(np.float16)
            if valid is not None:
                out[:, ~valid] = np.nan
            self.scores[(slice(None), *box.slices)] = out

    def mark_done(self, index: Index, record: dict[str, Any]) -> None:
        """Record that chunk ``index`` is complete (after its arrays are written)."""
        atomic_write_text(self.path / DONE_DIR / _record_name(index), json.dumps(record))

    def done(self) -> dict[Index, dict[str, Any]]:
        """Completion records of the finished chunks; an unreadable record counts as not finished."""
        out: dict[Index, dict[str, Any]] = {}
        folder = self.path / DONE_DIR
        if not folder.is_dir():
            return out
        for entry in folder.glob("*.json"):
            try:
                index = tuple(int(i) for i in entry.stem.split("_"))
                out[index] = json.loads(entry.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
        return out

    def read_labels(self, box: Box) -> np.ndarray:
        """Class ids ``box.shape`` uint8 (a multi-label store refuses: see :attr:`labels`)."""
        return np.asarray(self.labels[box.slices])

    def read_present(self, box: Box, k: int | None = None) -> np.ndarray:
        """A multi-label store's planes ``(K, *box.shape)`` over ``box``, or class ``k``'s plane ``box.shape``."""
        return np.asarray(self.present[(slice(None) if k is None else k, *box.slices)])
