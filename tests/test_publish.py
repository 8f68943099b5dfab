"""Atomic publication, and cleaning up after runs that were killed outright."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import rasterio

from segflow.io.publish import OLD_PREFIX, STAGING_PREFIX, Staging, _process_space, remove_orphans
from segflow.synthetic import write_synthetic_scene


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
    assert sorted(p.name for p in out.iterdir()) == ["labels.tif", "mask.zarr", "run.json"]
    with rasterio.open(out / "labels.tif") as ds:
        assert (ds.width, ds.height) == (1536, 1536)
