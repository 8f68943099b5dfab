"""Atomic publication, and cleaning up after runs that were killed outright."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from segflow.io.mask_store import MaskStore
from segflow.io.publish import OLD_PREFIX, STAGING_PREFIX, Staging, _process_space, remove_orphans
from segflow.synthetic import write_synthetic_scene
from segflow.tiling import Box


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _staging(output: Path, pid: int | None, name: str = "abc") -> Path:
    path = output / f"{STAGING_PREFIX}{name}"
    path.mkdir(parents=True)
    (path / "labels.raw.tif").write_bytes(b"partial")
    if pid is not None:
        (path / "owner.json").write_text(json.dumps({"pid": pid, "space": _process_space()}))
    return path


def test_staging_of_a_dead_run_is_removed_and_a_live_one_kept(tmp_path: Path) -> None:
    dead = _staging(tmp_path, _dead_pid(), "dead")
    live = _staging(tmp_path, os.getpid(), "live")
    elsewhere = tmp_path / f"{STAGING_PREFIX}other-host"
    elsewhere.mkdir()
    (elsewhere / "owner.json").write_text(json.dumps({"pid": _dead_pid(), "space": "other-host pid:[4026531836]"}))
    young_unknown = _staging(tmp_path, None, "young")
    old_unknown = _staging(tmp_path, None, "ancient")
    os.utime(old_unknown, (time.time() - 3 * 86400, time.time() - 3 * 86400))
    assert remove_orphans(tmp_path) == [old_unknown, dead]
    assert not dead.exists() and not old_unknown.exists()
    assert live.exists() and elsewhere.exists() and young_unknown.exists()


def test_an_output_moved_aside_by_a_killed_run_is_put_back(tmp_path: Path) -> None:
    aside = tmp_path / f"{OLD_PREFIX}0123456789ab-mask.zarr"
    (aside / "labels").mkdir(parents=True)
    (aside / "zarr.json").write_text("{}")
    replaced = tmp_path / f"{OLD_PREFIX}ba9876543210-other.zarr"
    replaced.mkdir()
    (tmp_path / "other.zarr").mkdir()
    live = _staging(tmp_path, os.getpid())
    assert remove_orphans(tmp_path) == [], "nothing is touched while another run may be publishing"
    shutil.rmtree(live)  # that run has finished
    assert remove_orphans(tmp_path) == [aside, replaced]
    assert (tmp_path / "mask.zarr" / "zarr.json").read_text() == "{}"
    assert not replaced.exists() and (tmp_path / "other.zarr").is_dir()


def test_a_new_staging_records_its_owner_and_is_removed_on_exit(tmp_path: Path) -> None:
    with Staging(tmp_path / "out") as staging:
        owner = json.loads((staging.path / "owner.json").read_text())
        assert owner["pid"] == os.getpid() and owner["space"].startswith(socket.gethostname())
    assert not staging.path.exists()


def test_a_killed_run_leaves_no_debris_after_the_next_run(tmp_path: Path) -> None:
    scene = tmp_path / "scene.tif"
    write_synthetic_scene(scene, width=1536, height=1536, seed=3)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "segflow", "run", "tile-infer", "-i", str(scene), "-o", str(out), "-q",
           "-m", "demo-unet-2d", "--chunk", "512"]
    run = subprocess.Popen(cmd)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(f"{STAGING_PREFIX}*/mask.zarr")):
        time.sleep(0.05)
    time.sleep(0.5)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert list(out.glob(f"{STAGING_PREFIX}*")), "the kill came mid-run and left its staging folder"
    assert not (out / "labels.tif").exists()
    subprocess.run(cmd, check=True)
    assert sorted(p.name for p in out.iterdir()) == ["labels.tif", "labels.tif.aux.xml", "mask.zarr", "run.json"]
    with rasterio.open(out / "labels.tif") as ds:
        assert (ds.width, ds.height) == (1536, 1536)


# ----------------------------------------------------------------------------- what a reader of the folder sees

NAMES = ["mask.zarr", "labels.tif", "run.json"]  # the order tile_infer publishes in
MISSING, STALE = "missing", "stale"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stage_version(staging: Path, version: int, size: int = 1536) -> dict[str, str]:
    """Write a complete output set (a real GeoTIFF, mask store and run record) for ``version``; its digests."""
    labels = ((np.add.outer(np.arange(size), np.arange(size)) + version) % 7).astype(np.uint8)
    with rasterio.open(staging / "labels.tif", "w", driver="GTiff", width=size, height=size, count=1,
                       dtype="uint8", crs="EPSG:32632", transform=rasterio.Affine(10, 0, 6e5, 0, -10, 5.1e6),
                       tiled=True, blockxsize=256, blockysize=256) as ds:  # uncompressed: a copy takes a while
        ds.write(labels, 1)
    store = MaskStore.create(staging / "mask.zarr", (64, 64), (64, 64), ["a", "b", "c"], save_scores=False,
                             attrs={"run_fingerprint": f"version-{version}"})
    store.write(Box((0, 0), (64, 64)), labels[:64, :64])
    (staging / "run.json").write_text(json.dumps({"run": {"fingerprint": f"version-{version}"}}, indent=2) + "\n")
    return {"labels.tif": _sha((staging / "labels.tif").read_bytes()),
            "run.json": _sha((staging / "run.json").read_bytes()),
            "mask.zarr": _observe_store(staging / "mask.zarr")}


def _observe_store(path: Path) -> str:
    """Digest of the group metadata and the labels chunk of ``path``, read through one directory handle."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return MISSING
    try:
        parts = []
        for rel in ("zarr.json", "labels/zarr.json", "labels/c/0/0"):
            try:
                f = os.open(rel, os.O_RDONLY, dir_fd=fd)
            except FileNotFoundError:
                try:  # the directory read was replaced meanwhile (and is being deleted): no verdict
                    return STALE if os.stat(path).st_ino != os.fstat(fd).st_ino else "partial: no " + rel
                except FileNotFoundError:
                    return STALE
            with os.fdopen(f, "rb") as handle:
                parts.append(_sha(handle.read()))
        return _sha("".join(parts).encode())
    finally:
        os.close(fd)


def _observe(path: Path) -> str:
    if path.suffix == ".zarr":
        return _observe_store(path)
    try:
        return _sha(path.read_bytes())
    except FileNotFoundError:
        return MISSING


def _publish_version(out: Path, version: int, digests: dict[int, dict[str, str]]) -> None:
    with Staging(out) as staging:
        digests[version] = _stage_version(staging.path, version)
        staging.publish(NAMES)


def test_a_reader_polling_the_folder_never_sees_a_partial_or_missing_output(tmp_path: Path) -> None:
    """Several runs publish new outputs over old ones while a reader reads the folder in a tight loop."""
    out = tmp_path / "out"
    digests: dict[int, dict[str, str]] = {}
    _publish_version(out, 0, digests)
    seen: list[tuple[str, str]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            for name in NAMES:
                seen.append((name, _observe(out / name)))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the two threads finely
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for version in range(1, 11):
            _publish_version(out, version, digests)
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(30)
        sys.setswitchinterval(interval)
    versions = {name: {d[name]: v for v, d in digests.items()} for name in NAMES}
    # a store read through a handle on the old directory while that is deleted after the swap: no verdict;
    # off Linux a directory is replaced by two renames, so mask.zarr may be missing for an instant there
    excused = {STALE} if sys.platform.startswith("linux") else {STALE, MISSING}
    bad = [(name, obs) for name, obs in seen
           if obs not in versions[name] and not (name == "mask.zarr" and obs in excused)]
    assert not bad, f"{len(bad)} of {len(seen)} reads saw a missing or partial output, e.g. {bad[:5]}"
    observed = {name: {versions[name][obs] for n, obs in seen if n == name and obs in versions[name]}
                for name in NAMES}
    assert len(seen) > 50 and all(len(v) >= 3 for v in observed.values()), ("the reader saw too little", observed)
    assert {name: _observe(out / name) for name in NAMES} == digests[10]


_AUDIT: dict[str, Any] = {"observe": None}  # sys.addaudithook cannot be removed: one hook, switched on here


def _audit(event: str, args: tuple[Any, ...]) -> None:
    observe = _AUDIT["observe"]
    if observe is not None and event in ("os.rename", "os.remove", "os.rmdir", "os.link", "os.symlink",
                                         "shutil.rmtree", "shutil.copyfile", "shutil.copytree", "shutil.move"):
        _AUDIT["observe"] = None  # no re-entry
        try:
            observe(event)
        finally:
            _AUDIT["observe"] = observe


@contextmanager
def _every_filesystem_change(observe: Callable[[str], None]) -> Iterator[None]:
    """Call ``observe(event)`` before each rename, removal, link and copy this process makes."""
    if not _AUDIT.get("installed"):
        sys.addaudithook(_audit)
        _AUDIT["installed"] = True
    _AUDIT["observe"] = observe
    try:
        yield
    finally:
        _AUDIT["observe"] = None


def _states_during_publish(out: Path, names: list[str]) -> list[tuple[str, dict[str, bool]]]:
    states: list[tuple[str, dict[str, bool]]] = []
    with Staging(out) as staging:
        _stage_version(staging.path, 1)
        with _every_filesystem_change(lambda event: states.append((event, {n: (out / n).exists() for n in names}))):
            staging.publish(names)
    states.append(("end", {n: (out / n).exists() for n in names}))
    return states


def test_a_replaced_file_exists_at_every_step_of_a_publication(tmp_path: Path) -> None:
    """Deterministic: the folder's state before every rename, removal and copy, and after the last."""
    out = tmp_path / "out"
    _publish_version(out, 0, {})
    states = _states_during_publish(out, ["labels.tif", "run.json"])
    assert any(event == "os.rename" for event, _ in states), states
    gaps = [(event, state) for event, state in states if not all(state.values())]
    assert not gaps, f"an output was missing during its replacement: {gaps}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="directories are swapped in one step on Linux only")
def test_a_replaced_directory_exists_at_every_step_of_a_publication(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _publish_version(out, 0, {})
    states = _states_during_publish(out, ["mask.zarr"])
    gaps = [(event, state) for event, state in states if not all(state.values())]
    assert not gaps, f"mask.zarr was missing during its replacement: {gaps}"
