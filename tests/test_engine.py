"""The engine on every scheduler: same labels on threads, worker processes and a dask cluster; faults survived."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from segflow.engine import Execution
from segflow.engine import execute as engine_execute
from segflow.synthetic import write_synthetic_scene
from segflow.tile_infer import TileInferParams, tile_infer

from .helpers import make_ts_package, random_image, write_geotiff

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ts_package(tmp_path_factory.mktemp("pkg") / "net", bands=3, classes=3, tile=48)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = random_image((3, 211, 173), seed=5)
    image[:, :40, :60] = 0  # a nodata corner: skipped windows and NaN scores travel too
    return write_geotiff(tmp_path_factory.mktemp("scene") / "scene.tif", image, nodata=0)


@pytest.fixture(scope="module")
def demo_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "demo.tif"
    write_synthetic_scene(path, width=520, height=470, seed=7)
    return path


@pytest.fixture(scope="module")
def cluster() -> Any:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=40,
                                  worker_class=engine_execute.kept_environment_nanny()) as c:
        yield c


def _mask(out: Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    group = zarr.open_group(str(out / "mask.zarr"), mode="r")
    scores = group["scores"][:] if "scores" in group else None
    return group["labels"][:], scores, dict(group.attrs)


def test_threads_processes_and_a_cluster_give_identical_outputs(scene: Path, package: Path, cluster: Any,
                                                                tmp_path: Path) -> None:
    params = TileInferParams(model=str(package), chunk=64, batch=4, save_scores=True)
    runs = {}
    for name, execution in {"threads": Execution(), "processes": Execution(workers=2),
                            "cluster": Execution(address=cluster.scheduler_address)}.items():
        result = tile_infer(scene, tmp_path / name, params, execution=execution)
        assert result.windows_evaluated + result.windows_skipped == result.windows_total
        runs[name] = _mask(tmp_path / name)
    labels, scores, attrs = runs["threads"]
    assert scores is not None and (labels == 255).any() and (labels != 255).any()
    assert np.isnan(scores[:, labels == 255]).all() and not np.isnan(scores[:, labels != 255]).any()
    for name in ("processes", "cluster"):
        np.testing.assert_array_equal(runs[name][0], labels, err_msg=name)
        np.testing.assert_array_equal(runs[name][1], scores, err_msg=name)
        assert runs[name][2] == attrs


def test_a_real_float32_package_is_identical_on_every_scheduler(demo_scene: Path, cluster: Any,
                                                                tmp_path: Path) -> None:
    # fp32 pinned: demo-unet-2d declares bf16 too, which auto picks on a CPU with native bf16 (AMX), while a
    # remote cluster's auto is fp32 (its workers' hardware is unknown when the run is planned)
    params = TileInferParams(model="demo-unet-2d", chunk=192, batch=4, precision="fp32")
    labels = {}
    for name, execution in {"threads": Execution(), "processes": Execution(workers=2),
                            "cluster": Execution(address=cluster.scheduler_address)}.items():
        tile_infer(demo_scene, tmp_path / name, params, execution=execution)
        labels[name] = _mask(tmp_path / name)[0]
    assert len(np.unique(labels["threads"])) >= 3
    np.testing.assert_array_equal(labels["processes"], labels["threads"])
    np.testing.assert_array_equal(labels["cluster"], labels["threads"])


def test_a_worker_killed_mid_run_changes_nothing(demo_scene: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    params = TileInferParams(model="demo-unet-2d", chunk=128, batch=2, precision="fp32")  # as above
    tile_infer(demo_scene, reference, params)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=50,
                                  worker_class=engine_execute.kept_environment_nanny()) as c, \
            distributed.Client(c) as client:
        pids = list(client.run(os.getpid).values())
        killed: list[int] = []

        def progress(done: int, total: int) -> None:
            if not killed and done >= 2:
                killed.append(pids[0])
                os.kill(pids[0], signal.SIGKILL)

        result = tile_infer(demo_scene, tmp_path / "out", params, execution=Execution(address=c.scheduler_address),
                            progress=progress)
        assert killed, "a worker was killed mid-run"
        assert result.chunks_computed == result.chunks
    np.testing.assert_array_equal(_mask(tmp_path / "out")[0], _mask(reference)[0])


@pytest.mark.parametrize("shape", [(40, 1500), (1500, 40), (450, 450)])
def test_contributions_are_released_as_their_chunks_are_merged(
        shape: tuple[int, int], package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On long scenes and on a square one: a chunk's own part (the bulk of an evaluation) lives only
    until that chunk is merged, and only seam parts (up to 3 a chunk) of about a row of chunks wait."""
    path = write_geotiff(tmp_path / "scene.tif", random_image((3, *shape), seed=2))
    alive: dict[str, set[int]] = {"own": set(), "seam": set()}
    peak = {"own": 0, "seam": 0}
    lock = threading.Lock()
    original = engine_execute.evaluate_chunk

    def counted(*args: Any) -> Any:
        evaluation = original(*args)
        with lock:
            for part in evaluation.parts.values():
                kind = "own" if part.has_valid else "seam"
                alive[kind].add(id(part))
                weakref.finalize(part, alive[kind].discard, id(part))
            for kind in peak:
                peak[kind] = max(peak[kind], len(alive[kind]))
        return evaluation

    monkeypatch.setattr(engine_execute, "evaluate_chunk", counted)
    result = tile_infer(path, tmp_path / "out", TileInferParams(model=str(package), chunk=50))
    rows, cols = (math.ceil(n / 50) for n in shape)
    assert result.chunks == rows * cols >= 30
    assert peak["own"] <= 3, f"{peak['own']} chunks' own parts held at once over {result.chunks} chunks"
    assert peak["seam"] <= 4 * (min(rows, cols) + 2), f"{peak['seam']} seam parts held at once"


def test_bad_execution_choices_are_refused(scene: Path, package: Path, tmp_path: Path) -> None:
    from segflow.errors import ConfigError

    with pytest.raises(ConfigError, match="either --workers"):
        tile_infer(scene, tmp_path / "o", TileInferParams(model=str(package)),
                   execution=Execution(workers=2, address="tcp://127.0.0.1:1"))
    with pytest.raises(ConfigError, match="workers must be >= 0"):
        tile_infer(scene, tmp_path / "o", TileInferParams(model=str(package)), execution=Execution(workers=-1))
    with pytest.raises(ConfigError, match="cannot reach the dask scheduler"):
        tile_infer(scene, tmp_path / "o", TileInferParams(model=str(package)),
                   execution=Execution(address="tcp://127.0.0.1:9"))


def test_a_local_cluster_leaves_this_process_environment_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """distributed's nanny puts OMP_NUM_THREADS=1 (and others) into the parent's environment for its workers; a run
    with --workers must not leave them to the process (a flow worker) and to what it starts later."""
    def no_nanny_spawning() -> None:  # other clusters of this module (a worker restarted late) may be spawning
        deadline = time.monotonic() + 60
        while engine_execute._environ_kept["users"]:
            assert time.monotonic() < deadline, "the nannies' spawns end"
            time.sleep(0.1)

    no_nanny_spawning()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")
    before = {k: os.environ.get(k) for k in keys}
    cluster = engine_execute.start_local_cluster(1, False)
    try:
        no_nanny_spawning()
        assert {k: os.environ.get(k) for k in keys} == before
        with distributed.Client(cluster) as client:  # a worker that dies is started again by its nanny
            (pid,) = client.run(os.getpid).values()
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while list(client.run(os.getpid, on_error="ignore").values()) in ([], [pid]):
                assert time.monotonic() < deadline, "the nanny restarts the killed worker"
                time.sleep(0.2)
            (restarted,) = client.run(lambda: os.environ.get("OMP_NUM_THREADS")).values()
        assert restarted == "1", "the workers still get the nanny's variables"
        no_nanny_spawning()
        assert {k: os.environ.get(k) for k in keys} == before
    finally:
        cluster.close()
    assert {k: os.environ.get(k) for k in keys} == before
