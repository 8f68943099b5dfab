"""Scenes georeferenced by ground control points or an RPC camera model keep it in every output."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.rpc import RPC

from segflow.errors import InputError
from segflow.io.geotiff import open_geotiff
from segflow.tile_infer import TileInferParams, tile_infer

from .helpers import make_ts_package, random_image
from .test_tile_infer import COG_VALIDATOR

# A Sentinel-1 GRD-like footprint: corner and centre points in WGS 84, heights in metres.
GCPS = [GroundControlPoint(row=r, col=c, x=x, y=y, z=z) for r, c, x, y, z in [
    (0, 0, 12.10, 45.90, 110.0), (0, 149, 12.52, 45.95, 95.5), (119, 0, 12.04, 45.61, 130.25),
    (119, 149, 12.46, 45.66, 80.0), (60, 75, 12.28, 45.78, 101.0)]]
RPCS = RPC(err_bias=0.5, err_rand=0.25, height_off=250.0, height_scale=500.0, lat_off=45.8, lat_scale=0.2,
           line_off=60.0, line_scale=60.0,
           long_off=12.3, long_scale=0.25, samp_off=75.0, samp_scale=75.0,
           line_num_coeff=[0.01, -1.02, 0.003] + [0.0] * 17, line_den_coeff=[1.0] + [0.0] * 19,
           samp_num_coeff=[-0.02, 0.004, 1.01] + [0.0] * 17, samp_den_coeff=[1.0] + [0.0] * 19)


def _write(path: Path, *, gcps: bool = False, rpcs: bool = False) -> Path:
    image = random_image((3, 120, 150), seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=150, height=120, count=3, dtype="uint16",
                           tiled=True, blockxsize=64, blockysize=64) as dst:
            dst.write(image)
            if gcps:
                dst.gcps = (GCPS, CRS.from_epsg(4326))
            if rpcs:
                dst.rpcs = RPCS
    return path


def _assert_same_rpcs(got: RPC, want: RPC) -> None:
    a, b = got.to_dict(), want.to_dict()
    assert a.keys() == b.keys()
    for key, value in b.items():
        assert a[key] == pytest.approx(value), key


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ts_package(tmp_path_factory.mktemp("pkg") / "net", bands=3, classes=3, tile=48)


def _points(gcps: list[GroundControlPoint]) -> list[tuple[float, float, float, float, float]]:
    return [(g.row, g.col, g.x, g.y, g.z) for g in gcps]


def test_ground_control_points_without_heights_read_as_height_zero(tmp_path: Path) -> None:
    path = tmp_path / "flat.tif"
    flat = [GroundControlPoint(row=g.row, col=g.col, x=g.x, y=g.y) for g in GCPS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8") as dst:
            dst.write(np.zeros((1, 8, 8), np.uint8))
            dst.gcps = (flat, CRS.from_epsg(4326))
    scene = open_geotiff(path)
    assert [p[4] for p in scene.gcps] == [0.0] * len(GCPS)
    assert [p[:4] for p in scene.gcps] == [(g.row, g.col, g.x, g.y) for g in GCPS]


def test_ground_control_points_reach_the_cog_and_the_zarr_attributes(package: Path, tmp_path: Path) -> None:
    scene = open_geotiff(_write(tmp_path / "grd.tif", gcps=True))
    assert scene.transform is None and len(scene.gcps) == 5
    assert CRS.from_wkt(scene.gcp_crs or "") == CRS.from_epsg(4326)
    tile_infer(tmp_path / "grd.tif", tmp_path / "out", TileInferParams(model=str(package), chunk=64))
    tif = tmp_path / "out" / "labels.tif"
    with rasterio.open(tif) as ds:
        points, crs = ds.gcps
        np.testing.assert_allclose(_points(points), _points(GCPS), rtol=1e-12)
        assert crs == CRS.from_epsg(4326)
        assert (ds.width, ds.height) == (150, 120)
    attrs = dict(zarr.open_group(str(tmp_path / "out" / "mask.zarr"), mode="r").attrs)
    assert attrs["gcps"] == [list(p) for p in _points(GCPS)]
    assert CRS.from_wkt(attrs["gcp_crs"]) == CRS.from_epsg(4326)
    check = subprocess.run(["/usr/bin/python3", str(COG_VALIDATOR), "--full-check=yes", str(tif)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # GDAL can warp the mask with its GCPs exactly like the scene
    warped = tmp_path / "warped.tif"
    subprocess.run(["gdalwarp", "-q", "-t_srs", "EPSG:4326", "-r", "near", str(tif), str(warped)], check=True)
    with rasterio.open(warped) as ds:
        left, bottom, right, top = ds.bounds
        assert 12.0 < left < 12.1 and 12.5 < right < 12.6 and 45.6 < bottom < 45.7 and 45.9 < top < 46.0


def test_rpcs_reach_the_cog_and_the_zarr_attributes(package: Path, tmp_path: Path) -> None:
    scene = open_geotiff(_write(tmp_path / "l1.tif", rpcs=True))
    assert scene.rpcs is not None
    tile_infer(tmp_path / "l1.tif", tmp_path / "out", TileInferParams(model=str(package)))
    with rasterio.open(tmp_path / "out" / "labels.tif") as ds:
        assert ds.rpcs is not None
        _assert_same_rpcs(ds.rpcs, RPCS)
    attrs = dict(zarr.open_group(str(tmp_path / "out" / "mask.zarr"), mode="r").attrs)
    _assert_same_rpcs(RPC.from_gdal(attrs["rpcs"]), RPCS)


def test_inputs_with_different_ground_control_points_are_refused(tmp_path: Path) -> None:
    from segflow.bands import check_same_grid

    a = open_geotiff(_write(tmp_path / "a.tif", gcps=True))
    b = open_geotiff(_write(tmp_path / "b.tif"))
    with pytest.raises(InputError, match=r"different ground control points \(a 5, b 0\)"):
        check_same_grid(a, b, names=("a", "b"))
    check_same_grid(a, a, names=("a", "b"))
