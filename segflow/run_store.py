"""What a run finds in its output folder: published outputs that are already this run's, or a store to reuse.

A run is identified by two digests. The *fingerprint* (:func:`segflow.engine.run_fingerprint`) covers
what changes the pixels of ``mask.zarr``: the input, the model, every pixel parameter. The *exports
digest* covers the options of the outputs made from that store (vectors, their filters, panoptic ids,
meshes). A published run whose fingerprint and exports digest both match is up to date: nothing is done.
One whose fingerprint matches but whose exports differ keeps its masks: the published ``mask.zarr`` is
copied into the new run's staging folder, and only the exports are written again (the model does not run).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .errors import InputError
from .io.mask_store import MaskStore
from .run_params import TileInferParams

__all__ = ["exports_digest", "published_store", "reuse_or_create", "up_to_date"]


def exports_digest(params: TileInferParams) -> str:
    """SHA-256 (hex) over the options that shape the outputs made from the store (not its pixels)."""
    record = {"vectorize": params.vectorize, "vector_options": asdict(params.vector_options),
              "panoptic": params.panoptic, "meshes": params.meshes,
              "scene_id": params.scene_id}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def _record(output: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((output / "run.json").read_text(encoding="utf-8"))
        return record if isinstance(record, dict) and isinstance(record.get("run"), dict) else None
    except (OSError, ValueError):
        return None


def _store_fingerprint(path: Path) -> str | None:
    try:
        return MaskStore.open(path).fingerprint
    except InputError:
        return None


def up_to_date(output: Path, fingerprint: str, exports: str, names: list[str]) -> dict[str, Any] | None:
    """The published run.json when the published outputs are complete results of this very run and exports."""
    record = _record(output)
    if record is None or record["run"].get("fingerprint") != fingerprint or record["run"].get("exports") != exports:
        return None
    if not all((output / n).exists() for n in names) or _store_fingerprint(output / "mask.zarr") != fingerprint:
        return None
    return record


def published_store(output: Path, fingerprint: str, chunks: int) -> Path | None:
    """The published ``mask.zarr`` when it is this run's masks, finished (``chunks`` completion records)."""
    record = _record(output)
    if record is None or record["run"].get("fingerprint") != fingerprint:
        return None
    path = output / "mask.zarr"
    try:
        store = MaskStore.open(path)
    except InputError:
        return None
    return path if store.fingerprint == fingerprint and len(store.done()) == chunks else None


def reuse_or_create(path: Path, fingerprint: str, create: Callable[[], MaskStore],
                    published: Path | None = None) -> tuple[MaskStore, bool]:
    """The store for a run at ``path``, and whether its masks are already final.

    An earlier attempt's store of this run at ``path`` is reused (its finished chunks are not computed
    again). Else ``published`` (a finished store of this run, see :func:`published_store`) is copied to
    ``path``: its masks are final, only the exports remain. Else ``create()``, after clearing ``path``.
    """
    if path.exists():
        try:
            store = MaskStore.open(path, mode="r+")
            if store.fingerprint == fingerprint:
                return store, bool(store.attrs.get("final"))
        except InputError:
            pass
        shutil.rmtree(path)
    if published is not None:
        shutil.copytree(published, path)
        store = MaskStore.open(path, mode="r+")
        store.group.attrs.update({"final": True})
        return store, True
    return create(), False
