"""End to end: GeoTIFF in, zarr + COG + run.json out, on the input's exact grid."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
import zarr

from segflow.errors import InputError, ModelError, OutputError, SegflowWarning
from segflow.tile_infer import TileInferParams, tile_infer

from .helpers import CRS, TRANSFORM, make_ts_package, random_image, write_geotiff

COG_VALIDATOR = Path("/usr/lib/python3/dist-packages/osgeo_utils/samples/validate_cloud_optimized_geotiff.py")


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ts_package(tmp_path_factory.mktemp("pkg") / "net", bands=3, classes=3, tile=48)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_geotiff(tmp_path_factory.mktemp("scene") / "scene.tif", random_image((3, 203, 157), seed=11))


def run(scene: Path, out: Path, model: Path | str, **kw: object) -> object:
    return tile_infer(scene, out, TileInferParams(model=str(model), **kw))  # type: ignore[arg-type]


def test_outputs_have_the_input_grid_and_are_complete(scene: Path, package: Path, tmp_path: Path) -> None:
    result = run(scene, tmp_path / "out", package, chunk=64, save_scores=True, batch=3)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["labels.tif", "labels.tif.aux.xml", "mask.zarr", "run.json"]
    with rasterio.open(out / "labels.tif") as ds, rasterio.open(scene) as src:
        assert ds.crs == src.crs and ds.transform == src.transform
        assert (ds.width, ds.height, ds.count, ds.dtypes[0]) == (src.width, src.height, 1, "uint8")
        assert ds.nodata == 255 and ds.profile["tiled"]
        tif_labels = ds.read(1)
    group = zarr.open_group(str(out / "mask.zarr"), mode="r")
    assert group.metadata.zarr_format == 3
    labels, scores = group["labels"][:], group["scores"][:]
    assert labels.dtype == np.uint8 and labels.shape == (203, 157)
    assert scores.dtype == np.float16 and scores.shape == (3, 203, 157)
    np.testing.assert_array_equal(labels, tif_labels)
    s32 = np.sort(scores.astype(np.float32), axis=0)
    clear = s32[-1] - s32[-2] > 2e-3  # float16 rounding can tie close scores
    np.testing.assert_array_equal(labels[clear], scores.astype(np.float32).argmax(0)[clear])
    np.testing.assert_allclose(scores.astype(np.float32).sum(0), 1.0, atol=3e-3)
    attrs = dict(group.attrs)
    assert rasterio.crs.CRS.from_wkt(attrs["crs"]) == rasterio.crs.CRS.from_string(CRS)
    assert attrs["transform"] == list(TRANSFORM)[:6]
    assert attrs["class_names"] == ["c0", "c1", "c2"] and attrs["nodata"] == 255
    info = json.loads((out / "run.json").read_text())
    assert info["windows"]["evaluated"] == result.windows_evaluated == 6 * 5  # type: ignore[attr-defined]
    assert info["chunks_written"] == 4 * 3
    assert info["model"]["weights_sha256"] and len(info["model"]["weights_sha256"]) == 64
    assert info["parameters"]["chunk"] == 64 and info["input"]["width"] == 157
    assert info["segflow_version"] and info["wall_seconds"] > 0


def test_labels_tif_passes_gdal_cog_validator(scene: Path, package: Path, tmp_path: Path) -> None:
    big = write_geotiff(tmp_path / "big.tif", random_image((3, 1100, 1300), seed=3), block=256)
    run(big, tmp_path / "out", package, chunk=512)
    tif = tmp_path / "out" / "labels.tif"
    if not COG_VALIDATOR.exists():
        pytest.fail(f"GDAL's COG validator is missing ({COG_VALIDATOR}); install python3-gdal (make setup)")
    check = subprocess.run(["/usr/bin/python3", str(COG_VALIDATOR), "--full-check=yes", str(tif)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "is a valid cloud optimized GeoTIFF" in check.stdout
    with rasterio.open(tif) as ds:
        assert ds.overviews(1), "COG has overviews"
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_chunk_size_does_not_change_labels(scene: Path, package: Path, tmp_path: Path) -> None:
    runs = {}
    for chunk in (37, 100, 4096):
        run(scene, tmp_path / f"o{chunk}", package, chunk=chunk, save_scores=True, batch=4)
        g = zarr.open_group(str(tmp_path / f"o{chunk}" / "mask.zarr"), mode="r")
        runs[chunk] = (g["labels"][:], g["scores"][:])
    for chunk in (37, 100):
        np.testing.assert_array_equal(runs[chunk][0], runs[4096][0])
        np.testing.assert_allclose(runs[chunk][1].astype(np.float32), runs[4096][1].astype(np.float32), atol=1e-3)


@pytest.mark.parametrize("shape", [(1, 300), (300, 1), (20, 30), (1, 1)])
def test_tiny_and_strip_scenes_are_fully_covered(shape: tuple[int, int], package: Path, tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "s.tif", random_image((3, *shape), seed=1), tiled=False)
    result = run(path, tmp_path / "out", package, chunk=128)
    labels = zarr.open_group(str(tmp_path / "out" / "mask.zarr"), mode="r")["labels"][:]
    assert labels.shape == shape and (labels != 255).all()
    assert result.windows_evaluated >= 1  # type: ignore[attr-defined]


def test_nodata_pixels_are_nodata_in_labels_and_empty_windows_skipped(package: Path, tmp_path: Path) -> None:
    image = random_image((3, 160, 160), seed=4)
    image[:, :, :80] = 0
    path = write_geotiff(tmp_path / "nd.tif", image, nodata=0)
    result = run(path, tmp_path / "out", package, chunk=64, tile=32, overlap=0.0)
    with rasterio.open(tmp_path / "out" / "labels.tif") as ds:
        labels = ds.read(1)
    assert (labels[:, :80] == 255).all() and (labels[:, 80:] != 255).all()
    assert result.windows_skipped == 5 * 2 and result.windows_evaluated == 5 * 3  # type: ignore[attr-defined]


def test_band_descriptions_and_overrides_choose_the_model_inputs(tmp_path: Path) -> None:
    image = random_image((4, 64, 64), seed=2)
    image[3] = image[1] // 4  # band 4 is dark: with green=2 and nir=4 everything is water by NDWI
    plain = write_geotiff(tmp_path / "plain.tif", image)
    tile_infer(plain, tmp_path / "a", TileInferParams(model="ndwi-water", tile=32))
    with rasterio.open(tmp_path / "a" / "labels.tif") as ds:
        assert (ds.read(1) == 1).all()
    with pytest.raises(InputError, match=r"band 2 for green, nir"):  # nir named, green by its index: an accident
        tile_infer(plain, tmp_path / "b", TileInferParams(model="ndwi-water", tile=32, bands={"nir": 2}))
    tile_infer(plain, tmp_path / "b", TileInferParams(model="ndwi-water", tile=32, bands={"nir": 2, "green": 2}))
    with rasterio.open(tmp_path / "b" / "labels.tif") as ds:
        assert (ds.read(1) == 0).all(), "green == nir gives NDWI 0: no water"
    named = write_geotiff(tmp_path / "named.tif", image[[3, 1, 0, 2]], descriptions=["nir", "green", "blue", "red"])
    tile_infer(named, tmp_path / "c", TileInferParams(model="ndwi-water", tile=32))
    with rasterio.open(tmp_path / "c" / "labels.tif") as ds:
        assert (ds.read(1) == 1).all(), "bands found by their descriptions, not by position"


def test_model_band_count_mismatch_is_refused(package: Path, tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "one.tif", random_image((2, 40, 40)))
    with pytest.raises(InputError, match=r"one\.tif has 2 bands but model .* reads 3 bands"):
        run(path, tmp_path / "out", package)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_malformed_model_yaml_is_refused(scene: Path, package: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(package, bad)
    spec = yaml.safe_load((bad / "model.yaml").read_text())
    spec["overlap"] = 1.5
    spec["classes"] = [{"name": "only"}]
    (bad / "model.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ModelError, match=r"model.yaml is invalid: overlap: .*less than 1"):
        run(scene, tmp_path / "out", bad)
    (bad / "model.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ModelError, match="not valid YAML at line"):
        run(scene, tmp_path / "out", bad)


def test_truncated_geotiff_fails_cleanly_and_keeps_earlier_outputs(package: Path, tmp_path: Path) -> None:
    good = write_geotiff(tmp_path / "good.tif", random_image((3, 300, 300), seed=8), block=64)
    run(good, tmp_path / "out", package, chunk=128)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.is_file()}
    data = good.read_bytes()
    broken = tmp_path / "broken.tif"
    broken.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match="truncated or corrupt"):
        run(broken, tmp_path / "out", package, chunk=128)
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.is_file()}
    assert after == before, "a failed run leaves the earlier outputs untouched"
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == [], "no staging left"


def test_failure_mid_run_publishes_nothing(scene: Path, tmp_path: Path) -> None:
    pkg = make_ts_package(tmp_path / "wrong", bands=3, classes=3, tile=32)
    spec = yaml.safe_load((pkg / "model.yaml").read_text())
    spec["classes"].append({"name": "c3"})  # the network returns 3 channels, the contract says 4
    (pkg / "model.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ModelError, match=r"returned shape \(\d+, 3, 32, 32\).*promises \(N, 4, 32, 32\)"):
        run(scene, tmp_path / "out", pkg)
    assert list((tmp_path / "out").iterdir()) == []


def test_unwritable_output_is_refused(scene: Path, package: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="exists and is not a directory"):
        run(scene, blocker, package)
    with pytest.raises(OutputError, match="cannot create output directory"):
        run(scene, blocker / "sub", package)
    with pytest.raises(OutputError, match="cannot"):
        run(scene, Path("/proc/segflow-test-out"), package)


def test_an_extreme_overlap_is_warned_about_with_the_window_count(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "small.tif", random_image((4, 40, 40), seed=5))
    with pytest.warns(SegflowWarning, match=r"^overlap 0.9 makes 1089 windows for a 40x40 scene with 8x8 tiles"):
        result = tile_infer(path, tmp_path / "a", TileInferParams(model="spectral-landcover", tile=8, overlap=0.9))
    assert result.windows_total == 33 * 33  # stride 1: the warning's count is the run's
    with warnings.catch_warnings():
        warnings.simplefilter("error", SegflowWarning)
        tile_infer(path, tmp_path / "b", TileInferParams(model="spectral-landcover", tile=8, overlap=0.5))
