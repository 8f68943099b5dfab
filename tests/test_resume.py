"""Runs killed outright (SIGKILL) at any moment resume to exactly the uninterrupted result; one run per output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import zarr

from segflow.errors import OutputError
from segflow.io.lock import LOCK_NAME, OutputLock
from segflow.synthetic import write_synthetic_scene
from segflow.tile_infer import TileInferParams, tile_infer

ARGS = ["-m", "demo-unet-2d", "--chunk", "128", "--save-scores", "-q"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    write_synthetic_scene(path, width=700, height=520, seed=4)
    return path


@pytest.fixture(scope="module")
def reference(scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    _segflow(scene, out)
    return out


def _segflow(scene: Path, out: Path, failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SEGFLOW_FAILPOINT"}
    if failpoint:
        env["SEGFLOW_FAILPOINT"] = failpoint
    return subprocess.run([sys.executable, "-m", "segflow", "run", "tile-infer", "-i", str(scene), "-o", str(out),
                           *ARGS], env=env, capture_output=True, text=True, timeout=600)


def _outputs(out: Path) -> dict[str, Any]:
    with rasterio.open(out / "labels.tif") as ds:
        tif = {"pixels": ds.read(1), "tags": ds.tags(), "band_tags": ds.tags(1), "crs": ds.crs,
               "transform": ds.transform, "colormap": ds.colormap(1), "overviews": ds.overviews(1)}
    group = zarr.open_group(str(out / "mask.zarr"), mode="r")
    return {"tif": tif, "labels": group["labels"][:], "scores": group["scores"][:], "attrs": dict(group.attrs)}


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in ("tags", "band_tags", "crs", "transform", "colormap", "overviews"):
        assert a["tif"][key] == b["tif"][key], key
    np.testing.assert_array_equal(a["tif"]["pixels"], b["tif"]["pixels"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
    np.testing.assert_array_equal(a["scores"], b["scores"])
    assert a["attrs"] == b["attrs"]


@pytest.mark.slow
@pytest.mark.parametrize("point", ["chunk:12", "cog", "publish"])
def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_result(point: str, scene: Path, reference: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "out"
    killed = _segflow(scene, out, point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    published = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert published == (["mask.zarr"] if point == "publish" else []), "killed where intended"
    if point == "chunk:12":  # chunks are computed again: by a process like the reference's (torch's thread count
        # decides the last bit of float16 scores, and tests before this one may change it in the pytest process)
        done = _segflow(scene, out)
        assert done.returncode == 0, done.stderr
    else:
        resumed = tile_infer(scene, out, TileInferParams(model="demo-unet-2d", chunk=128, save_scores=True))
    assert sorted(p.name for p in out.iterdir()) == ["labels.tif", "labels.tif.aux.xml", "mask.zarr",
                                                     "run.json"], "no debris left"
    _assert_same(_outputs(out), _outputs(reference))
    full = json.loads((reference / "run.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert run["run"]["fingerprint"] == full["run"]["fingerprint"]
    total = full["chunks_written"]
    assert (full["run"]["chunks_computed"], full["run"]["chunks_reused"]) == (total, 0)
    if point == "chunk:12":
        reused, computed = run["run"]["chunks_reused"], run["run"]["chunks_computed"]
        assert 12 <= reused < total and computed == total - reused
        assert run["windows"]["evaluated"] < full["windows"]["evaluated"], "only the windows still needed ran"
    elif point == "cog":  # every chunk was finished: only the COG and run.json are made again
        assert resumed.chunks_reused == total and resumed.windows_evaluated == 0
        assert run["run"]["chunks_reused"] == total and run["windows"]["evaluated"] == 0
    else:  # killed between the renames: the next run completes that publication and computes nothing
        assert resumed.chunks_computed == 0 and resumed.windows_evaluated == 0
        assert run["run"]["chunks_computed"] == total


def test_different_parameters_start_afresh_and_keep_earlier_outputs_until_done(scene: Path, reference: Path,
                                                                               tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _segflow(scene, out).returncode == 0
    before = (out / "labels.tif").read_bytes()
    env = {**os.environ, "SEGFLOW_FAILPOINT": "chunk:3"}
    killed = subprocess.run([sys.executable, "-m", "segflow", "run", "tile-infer", "-i", str(scene), "-o", str(out),
                             *ARGS, "--blend", "cosine"], env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL
    assert (out / "labels.tif").read_bytes() == before, "earlier outputs intact while a new run is unfinished"
    result = tile_infer(scene, out, TileInferParams(model="demo-unet-2d", chunk=128, save_scores=True))
    assert result.chunks_computed == 0, "the earlier, complete run of these parameters is reused"
    result = tile_infer(scene, out, TileInferParams(model="demo-unet-2d", chunk=128, blend="constant"))
    assert result.chunks_reused == 0 and result.chunks_computed == result.chunks
    assert sorted(p.name for p in out.iterdir()) == ["labels.tif", "labels.tif.aux.xml", "mask.zarr", "run.json"]


def test_a_second_run_into_a_busy_output_is_refused_and_a_dead_lock_taken_over(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from segflow.io.lock import OutputLock; "
                               f"OutputLock({str(out)!r}).acquire(); print('locked', flush=True); time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        cli = subprocess.run([sys.executable, "-m", "segflow", "run", "tile-infer", "-i", str(scene), "-o", str(out),
                              *ARGS], capture_output=True, text=True)
        assert cli.returncode == 4
        assert cli.stderr.count("\n") == 1 and f"pid {holder.pid}" in cli.stderr and "in use by another" in cli.stderr
        assert (out / LOCK_NAME).exists() and not (out / "labels.tif").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    result = tile_infer(scene, out, TileInferParams(model="spectral-landcover", chunk=256))
    assert result.chunks_computed == result.chunks, "the lock of a dead process was taken over"
    assert not (out / LOCK_NAME).exists(), "the lock is removed when the run ends"


def test_the_lock_is_exclusive_within_a_process_too(tmp_path: Path) -> None:
    with OutputLock(tmp_path), pytest.raises(OutputError, match=f"pid {os.getpid()}"):
        OutputLock(tmp_path).acquire()
    with OutputLock(tmp_path):  # released: free again
        time.sleep(0)
