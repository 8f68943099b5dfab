"""Inputs by any name GDAL opens (/vsizip, NETCDF:"f.nc":var), containers, and truncated or corrupt files.

Every refusal is one line on stderr with exit code 2, and a folder's earlier outputs stay
byte for byte as they were.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from segflow.engine import input_identity
from segflow.errors import InputError
from segflow.io.gdal_names import local_file
from segflow.io.geotiff import open_geotiff
from segflow.io.readers import open_scene
from segflow.tile_infer import TileInferParams, tile_infer

from .helpers import random_image, write_geotiff

PARAMS = TileInferParams(tile=32, chunk=64)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_geotiff(tmp_path_factory.mktemp("scene") / "scene.tif", random_image((4, 100, 120), seed=1),
                         block=32)


def zipped(scene: Path, root: Path) -> Path:
    archive = root / "archive.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(scene, "dir/scene.tif")
    return archive


def write_netcdf(path: Path, variables: list[str]) -> Path:
    """A netCDF-3 file with one (y, x) float32 variable per name (scipy writes netCDF-3; GDAL reads it)."""
    from scipy.io import netcdf_file

    with rasterio.Env() as env:
        if "netCDF" not in env.drivers():
            pytest.skip("this rasterio's GDAL has no netCDF driver")
    with netcdf_file(path, "w") as f:
        f.createDimension("y", 24)
        f.createDimension("x", 30)
        for i, name in enumerate(variables):
            var = f.createVariable(name, "f4", ("y", "x"))
            var[:] = random_image((24, 30), seed=i, dtype="float32")
    return path


def labels(out: Path) -> np.ndarray:
    with rasterio.open(out / "labels.tif") as ds:
        return ds.read(1)


# ----------------------------------------------------------------------------- names GDAL opens


def test_vsizip_name_runs_like_the_file_itself(scene: Path, tmp_path: Path) -> None:
    name = f"/vsizip/{zipped(scene, tmp_path)}/dir/scene.tif"
    opened = open_scene(name)
    np.testing.assert_array_equal(opened.data.compute(), rasterio.open(scene).read())
    tile_infer(scene, tmp_path / "plain", PARAMS)
    tile_infer(name, tmp_path / "zipped", PARAMS)
    np.testing.assert_array_equal(labels(tmp_path / "zipped"), labels(tmp_path / "plain"))
    record = json.loads((tmp_path / "zipped" / "run.json").read_text())["input"]
    assert record["path"] == name and record["size_bytes"] == (tmp_path / "archive.zip").stat().st_size


def test_gdal_name_identity_follows_its_local_file(scene: Path, tmp_path: Path) -> None:
    archive = zipped(scene, tmp_path)
    name = f"/vsizip/{archive}/dir/scene.tif"
    before = input_identity(name)
    assert before["name"] == name and before["file"]["size"] == archive.stat().st_size
    assert input_identity(f"/vsizip/{archive}/dir/other.tif") != before, "another member, another input"
    with zipfile.ZipFile(archive, "w") as z:  # rewritten with different content
        z.write(write_geotiff(tmp_path / "b.tif", random_image((4, 100, 120), seed=2)), "dir/scene.tif")
    assert input_identity(name) != before
    assert input_identity("/vsicurl/https://example.invalid/x.tif") == {"name": "/vsicurl/https://example.invalid/x.tif"}


@pytest.mark.parametrize(("name", "expected"), [
    ("/vsizip/{d}/a.zip/dir/x.tif", "a.zip"),
    ("/vsizip/{{{d}/a.zip}}/x.tif", "a.zip"),
    ("/vsitar/{d}/a.zip/x.tif", "a.zip"),
    ('NETCDF:"{d}/f.nc":var', "f.nc"),
    ('HDF5:"{d}/f.nc"://group/var', "f.nc"),
    ("GTIFF_DIR:2:{d}/a.zip", "a.zip"),
    ("/vsicurl/https://example.invalid/a.zip", None),
    ('NETCDF:"{d}/missing.nc":var', None),
])
def test_local_file_behind_a_gdal_name(tmp_path: Path, name: str, expected: str | None) -> None:
    (tmp_path / "a.zip").write_bytes(b"x")
    (tmp_path / "f.nc").write_bytes(b"x")
    found = local_file(name.format(d=tmp_path))
    assert (found.name if found else None) == expected


def test_netcdf_variable_by_its_gdal_name(tmp_path: Path) -> None:
    nc = write_netcdf(tmp_path / "two.nc", ["temp", "precip"])
    name = f'NETCDF:"{nc}":precip'
    scene = open_scene(name)
    with rasterio.open(name) as ds:
        np.testing.assert_array_equal(scene.data.compute(), ds.read())
    assert scene.source == name and input_identity(name)["file"]["name"] == "two.nc"


def test_container_lists_its_subdatasets_and_how_to_pick_one(tmp_path: Path) -> None:
    nc = write_netcdf(tmp_path / "many.nc", [f"v{i:02d}" for i in range(12)])
    with pytest.raises(InputError) as info:
        open_scene(nc)
    message = str(info.value)
    assert f"""--input 'NETCDF:"{nc}":v00'""" in message
    assert all(f'NETCDF:"{nc}":v{i:02d}' in message for i in range(10))
    assert f'NETCDF:"{nc}":v10' not in message and "and 2 more" in message
    assert "12 subdataset" in message and "\n" not in message
    with pytest.raises(InputError, match=f'holds these netCDF subdatasets: NETCDF:"{nc}":v00'):
        open_scene(f'NETCDF:"{nc}":nope')


# ----------------------------------------------------------------------------- truncated and corrupt files


def truncated(scene: Path, path: Path) -> Path:
    data = scene.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def corrupt_middle_block(scene: Path, path: Path) -> tuple[Path, int]:
    """A copy whose block (x 1, y 1) holds garbage: it opens, and fails when that block is read."""
    with rasterio.open(scene) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
        size = int(ds.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    data = bytearray(scene.read_bytes())
    data[offset : offset + size] = b"\xff" * size
    path.write_bytes(bytes(data))
    return path, offset


def test_truncated_file_names_gdal_error_and_block(scene: Path, tmp_path: Path) -> None:
    cut = truncated(scene, tmp_path / "cut.tif")
    with pytest.raises(InputError) as info:
        open_geotiff(cut)
    message = str(info.value)
    assert "See previous exception" not in message
    assert "IReadBlock failed at X offset 3, Y offset 3" in message and "got 0 bytes" in message
    assert f"of the {cut.stat().st_size}-byte file cut.tif" in message


def test_corrupt_block_read_during_the_run_names_window_and_block(scene: Path, tmp_path: Path) -> None:
    bad, offset = corrupt_middle_block(scene, tmp_path / "bad.tif")
    with pytest.raises(InputError) as info:
        tile_infer(bad, tmp_path / "out", PARAMS)
    message = str(info.value)
    assert "See previous exception" not in message and "Decoding error" in message
    assert re.search(r"cannot read window rows 0:\d+ cols 0:\d+ of \S*bad\.tif: the file is truncated", message)
    assert "IReadBlock failed at X offset 1, Y offset 1" in message and f"at byte offset {offset} " in message


# ----------------------------------------------------------------------------- the command line


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["container", "missing-member", "bad-variable", "truncated", "corrupt-block",
                                  "alpha-as-nir"])
def test_refusals_are_one_line_exit_2_and_leave_outputs_alone(scene: Path, tmp_path: Path, case: str) -> None:
    out = tmp_path / "out"
    tile_infer(scene, out, PARAMS)
    before = snapshot(out)
    nc = write_netcdf(tmp_path / "two.nc", ["temp", "precip"])
    if case == "alpha-as-nir":
        rgba = write_geotiff(tmp_path / "rgba.tif", random_image((4, 100, 120), seed=3, dtype="uint8"))
        with rasterio.open(rgba, "r+") as ds:
            ds.colorinterp = [*ds.colorinterp[:3], rasterio.enums.ColorInterp.alpha]
    source, needles = {
        "container": (str(nc), ["netCDF container of 2 subdataset(s)", f"""--input 'NETCDF:"{nc}":temp'"""]),
        "missing-member": (f"/vsizip/{zipped(scene, tmp_path)}/dir/nope.tif", ["input not found: GDAL cannot open"]),
        "bad-variable": (f'NETCDF:"{nc}":nope', [f'NETCDF:"{nc}":precip']),
        "truncated": (str(truncated(scene, tmp_path / "cut.tif")), ["truncated or corrupt", "X offset 3, Y offset 3"]),
        "corrupt-block": (str(corrupt_middle_block(scene, tmp_path / "bad.tif")[0]), ["X offset 1, Y offset 1"]),
        "alpha-as-nir": (str(tmp_path / "rgba.tif"), ["band 4 of", "is an alpha band", "--band nir=N"]),
    }[case]
    proc = subprocess.run([sys.executable, "-m", "segflow", "run", "tile-infer", "-i", source, "-o", str(out),
                           "--tile", "32", "--chunk", "64"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segflow: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0]
    assert "See previous exception" not in lines[0]
    published = {k: v for k, v in before.items() if not k.startswith(".")}  # hidden: staging, lock
    assert published and {k: v for k, v in snapshot(out).items() if not k.startswith(".")} == published
