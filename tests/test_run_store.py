"""run_store: when published outputs are this run's, and when a published store is reused for new exports."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from segflow.features import VectorOptions
from segflow.io.mask_store import MaskStore
from segflow.run_params import TileInferParams
from segflow.run_store import exports_digest, published_store, reuse_or_create, up_to_date
from segflow.tiling import Box


def _store(path: Path, fingerprint: str, chunks: int) -> MaskStore:
    store = MaskStore.create(path, (4, 8), (4, 4), ["a", "b"], save_scores=False,
                             attrs={"run_fingerprint": fingerprint})
    for i in range(chunks):
        store.write(Box((0, 4 * i), (4, 4 * i + 4)), np.zeros((4, 4), "uint8"))
        store.mark_done((0, i), {})
    return store


def _published(out: Path, fingerprint: str, exports: str, chunks: int = 2) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _store(out / "mask.zarr", fingerprint, chunks)
    (out / "labels.tif").write_bytes(b"x")
    (out / "run.json").write_text(json.dumps({"run": {"fingerprint": fingerprint, "exports": exports}}))


def test_exports_digest_changes_with_each_export_option_only() -> None:
    base = TileInferParams()
    digests = {exports_digest(p) for p in (
        base, replace(base, vectorize="gpkg"), replace(base, panoptic=True), replace(base, meshes=True),
        replace(base, scene_id="x"), replace(base, vector_options=VectorOptions(min_area=5.0)))}
    assert len(digests) == 6
    assert exports_digest(replace(base, tile=64, batch=3)) == exports_digest(base)  # pixel options are not exports


def test_up_to_date_needs_the_same_fingerprint_exports_files_and_store(tmp_path: Path) -> None:
    _published(tmp_path, "fp", "ex")
    names = ["mask.zarr", "labels.tif", "run.json"]
    assert up_to_date(tmp_path, "fp", "ex", names) is not None
    assert up_to_date(tmp_path, "fp", "other", names) is None
    assert up_to_date(tmp_path, "other", "ex", names) is None
    assert up_to_date(tmp_path, "fp", "ex", [*names, "instances.gpkg"]) is None
    MaskStore.open(tmp_path / "mask.zarr", mode="r+").group.attrs.update({"run_fingerprint": "stale"})
    assert up_to_date(tmp_path, "fp", "ex", names) is None  # run.json says fp, the store does not
    (tmp_path / "run.json").write_text("[1, 2]")
    assert up_to_date(tmp_path, "fp", "ex", names) is None


def test_only_a_finished_store_of_this_run_is_reused_for_new_exports(tmp_path: Path) -> None:
    _published(tmp_path / "done", "fp", "ex")
    assert published_store(tmp_path / "done", "fp", 2) == tmp_path / "done" / "mask.zarr"
    assert published_store(tmp_path / "done", "other", 2) is None
    _published(tmp_path / "half", "fp", "ex", chunks=1)
    assert published_store(tmp_path / "half", "fp", 2) is None  # a chunk without its completion record
    (tmp_path / "done" / "run.json").write_text(json.dumps({"run": {"fingerprint": "other"}}))
    assert published_store(tmp_path / "done", "fp", 2) is None


def _never() -> MaskStore:
    raise AssertionError("a new store was created")


def test_a_reused_store_is_final_and_stays_final_for_a_later_attempt(tmp_path: Path) -> None:
    _published(tmp_path / "out", "fp", "ex")
    staged = tmp_path / "staging" / "mask.zarr"
    store, final = reuse_or_create(staged, "fp", _never, tmp_path / "out" / "mask.zarr")
    assert final and len(store.done()) == 2 and store.attrs["final"] is True
    _, final_again = reuse_or_create(staged, "fp", _never)
    assert final_again  # an attempt killed after the copy keeps its masks final
    _store(tmp_path / "other.zarr", "other-run", 1)
    fresh = tmp_path / "fresh.zarr"
    _, final = reuse_or_create(tmp_path / "other.zarr", "fp", lambda: _store(fresh, "fp", 0))
    assert not final and not (tmp_path / "other.zarr").exists()  # another run's store is cleared first
    writable, _ = reuse_or_create(staged, "fp", _never)
    writable.write(Box((0, 0), (4, 4)), np.ones((4, 4), "uint8"))  # opened for writing
