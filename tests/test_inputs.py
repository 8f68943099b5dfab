"""Models that read several co-registered rasters (imagery + elevation, several sequences)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.transform import from_origin

from segflow.bands import parse_inputs
from segflow.errors import ConfigError, InputError
from segflow.tile_infer import TileInferParams, tile_infer

from .helpers import make_ts_package, random_image, write_geotiff


@pytest.fixture(scope="module")
def rasters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multi")
    image = random_image((3, 90, 110), seed=1)
    dem = random_image((1, 90, 110), seed=2)
    return {
        "image": write_geotiff(root / "image.tif", image),
        "dem": write_geotiff(root / "dem.tif", dem, block=32),
        "stacked": write_geotiff(root / "stacked.tif", np.concatenate([image[:2], dem, image[2:]])),
    }


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pkgs")
    single = make_ts_package(root / "single", bands=4, classes=3, tile=32, seed=3)
    multi = make_ts_package(root / "multi", bands=4, classes=3, tile=32, seed=3)
    spec = yaml.safe_load((multi / "model.yaml").read_text())
    spec["input"]["bands"] = [{"name": "red", "index": 1}, {"name": "green", "index": 2},
                              {"name": "elevation", "index": 1, "source": "dem"}, {"name": "blue", "index": 3}]
    (multi / "model.yaml").write_text(yaml.safe_dump(spec))
    return single, multi


def labels_of(out: Path) -> np.ndarray:
    with rasterio.open(out / "labels.tif") as ds:
        return ds.read(1)


def test_two_rasters_equal_one_stacked_raster(rasters: dict[str, Path], packages: tuple[Path, Path],
                                              tmp_path: Path) -> None:
    single, multi = packages
    tile_infer(rasters["stacked"], tmp_path / "one", TileInferParams(model=str(single), chunk=50))
    result = tile_infer({"image": rasters["image"], "dem": rasters["dem"]}, tmp_path / "two",
                        TileInferParams(model=str(multi), chunk=50))
    np.testing.assert_array_equal(labels_of(tmp_path / "one"), labels_of(tmp_path / "two"))
    assert result.windows_evaluated > 1


def test_cli_takes_named_inputs(rasters: dict[str, Path], packages: tuple[Path, Path], tmp_path: Path) -> None:
    _, multi = packages
    proc = subprocess.run([sys.executable, "-m", "segflow", "run", "tile-infer", "--input", str(rasters["image"]),
                           "--input", f"dem={rasters['dem']}", "-m", str(multi), "-o", str(tmp_path / "o"), "-q"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    missing = subprocess.run([sys.executable, "-m", "segflow", "run", "tile-infer", "--input", str(rasters["image"]),
                              "-m", str(multi), "-o", str(tmp_path / "p")], capture_output=True, text=True)
    assert missing.returncode == 2 and "reads the raster(s) image, dem" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("change", "message"), [
    ({"shape": (80, 110)}, r"different shape \(input 'image' 90x110, input 'dem' 80x110 rows x cols\)"),
    ({"transform": from_origin(600010.0, 5100000.0, 10.0, 10.0)}, r"different transform .*, 600010, .*gdalwarp"),
    ({"crs": "EPSG:4326"}, "different CRS"),
])
def test_rasters_on_different_grids_are_refused(rasters: dict[str, Path], packages: tuple[Path, Path],
                                                tmp_path: Path, change: dict, message: str) -> None:
    _, multi = packages
    shape = change.pop("shape", (90, 110))
    dem = write_geotiff(tmp_path / "dem.tif", random_image((1, *shape), seed=2), **change)
    with pytest.raises(InputError, match=message):
        tile_infer({"image": rasters["image"], "dem": dem}, tmp_path / "o", TileInferParams(model=str(multi)))


def test_parse_inputs() -> None:
    assert parse_inputs(["a.tif", "dem=b.tif"]) == {"image": "a.tif", "dem": "b.tif"}
    assert parse_inputs([Path("a.tif")]) == {"image": "a.tif"}
    # GDAL's names travel as the exact strings (pathlib would fold the // of a URL)
    assert parse_inputs(['NETCDF:"f.nc":var', "dem=/vsizip/a.zip/dem.tif", "x=/vsicurl/https://h/x.tif"]) == {
        "image": 'NETCDF:"f.nc":var', "dem": "/vsizip/a.zip/dem.tif", "x": "/vsicurl/https://h/x.tif"}
    with pytest.raises(ConfigError, match="given twice"):
        parse_inputs(["a.tif", "b.tif"])
    with pytest.raises(ConfigError, match="no input"):
        parse_inputs([])
