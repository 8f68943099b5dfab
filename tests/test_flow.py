"""The Prefect flow runs the library call under Prefect's test harness."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from .helpers import random_image, write_geotiff

prefect_testing = pytest.importorskip("prefect.testing.utilities")


@pytest.fixture(scope="module")
def harness():  # type: ignore[no-untyped-def]
    with prefect_testing.prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
def test_flow_runs_tile_infer_and_publishes_outputs(harness, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pipelines.tile_infer_flow import tile_infer_flow

    scene = write_geotiff(tmp_path / "scene.tif", random_image((4, 150, 170), seed=5))
    result = tile_infer_flow(str(scene), str(tmp_path / "out"), model="spectral-landcover", tile=64, chunk=100)
    assert result["windows_evaluated"] == 12
    with rasterio.open(result["outputs"]["labels.tif"]) as ds:
        assert (ds.width, ds.height) == (170, 150)
        labels = ds.read(1)
    assert set(np.unique(labels)) <= {0, 1, 2}
    run = json.loads(Path(result["outputs"]["run.json"]).read_text())
    assert run["parameters"]["chunk"] == 100 and run["windows"]["evaluated"] == 12


@pytest.mark.slow
def test_the_scene_flow_writes_its_exports_and_refuses_a_password_among_its_parameters(  # type: ignore[no-untyped-def]
        harness, tmp_path: Path) -> None:
    from pipelines.tile_infer_flow import tile_infer_flow
    from segflow.errors import ConfigError

    scene = write_geotiff(tmp_path / "scene.tif", random_image((4, 120, 130), seed=6))
    result = tile_infer_flow(str(scene), str(tmp_path / "out"), tile=64, vectorize="parquet", min_area=100.0)
    assert {"instances.parquet", "quicklook.png", "labels.tif"} <= set(result["outputs"])
    with pytest.raises(ConfigError, match="holds a password") as refused:
        tile_infer_flow(str(scene), str(tmp_path / "out2"), postgis="postgresql://u:pw-77@127.0.0.1/db?table=t")
    assert "pw-77" not in str(refused.value)
    assert not (tmp_path / "out2").exists()
