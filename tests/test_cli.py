"""The command line: thin, helpful, and one clear line with a non-zero exit on bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from segflow.cli import main
from segflow.synthetic import BANDS, CLASSES, synthesize_block

from .helpers import make_ts_package, random_image, write_geotiff


def segflow(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "segflow", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("segflow: error: ") and "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_geotiff(tmp_path_factory.mktemp("cli") / "scene.tif", random_image((4, 120, 90), seed=1))


def test_tile_infer_prints_one_summary_line(scene: Path, tmp_path: Path) -> None:
    proc = segflow("run", "tile-infer", "--input", scene, "--output", tmp_path / "out", "--tile", "64",
                   "--chunk", "50")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    assert "labels.tif" in lines[0] and "windows evaluated" in lines[0] and "MP/s" in lines[0]
    assert proc.stderr == "", "no progress bar when stderr is not a terminal"
    with rasterio.open(tmp_path / "out" / "labels.tif") as ds:
        assert (ds.width, ds.height) == (90, 120)


def test_quiet_prints_nothing(scene: Path, tmp_path: Path) -> None:
    proc = segflow("run", "tile-infer", "-i", scene, "-o", tmp_path / "out", "--quiet", "--tile", "64")
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""


def test_help_explains_every_option() -> None:
    proc = segflow("run", "tile-infer", "--help")
    assert proc.returncode == 0
    for option in ("--input", "--output", "--model", "--tile", "--overlap", "--blend", "--chunk", "--batch",
                   "--device", "--save-scores", "--band", "--quiet"):
        assert option in proc.stdout
    top = segflow("--help")
    assert top.returncode == 0 and "run" in top.stdout and "models" in top.stdout


def test_bad_inputs_get_one_line_and_nonzero_exit(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_one_line_error(segflow("run", "tile-infer", "-i", tmp_path / "missing.tif", "-o", out), 2,
                          "input file not found", "missing.tif")
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    assert_one_line_error(segflow("run", "tile-infer", "-i", text, "-o", out), 2, "is not a raster GDAL can read")
    assert_one_line_error(segflow("run", "tile-infer", "-i", scene, "-o", out, "--model", "no-such-model"), 3,
                          "unknown model 'no-such-model'", "spectral-landcover")
    assert_one_line_error(segflow("run", "tile-infer", "-i", scene, "-o", out, "--overlap", "1"), 2,
                          "overlap must be >= 0 and < 1, got 1.0")
    assert_one_line_error(segflow("run", "tile-infer", "-i", scene, "-o", out, "--band", "nir"), 2,
                          "must look like NAME=N")
    assert_one_line_error(segflow("run", "tile-infer", "-i", scene, "-o", out, "--device", "cuda:7"), 5,
                          "cuda")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_one_line_error(segflow("run", "tile-infer", "-i", scene, "-o", blocker / "x"), 4,
                          "cannot create output directory")


def test_complex_samples_are_refused_with_the_conversion_command(tmp_path: Path) -> None:
    slc = write_geotiff(tmp_path / "slc.tif", (random_image((2, 40, 40)) * (1 + 1j)).astype("complex64"))
    assert_one_line_error(segflow("run", "tile-infer", "-i", slc, "-o", tmp_path / "o"), 2,
                          "holds complex64 samples", "gdal_calc.py -A", "numpy.absolute(A)")
    assert not (tmp_path / "o" / "labels.tif").exists()


def test_an_ungeoreferenced_raster_runs_without_noise(tmp_path: Path) -> None:
    png = tmp_path / "photo.png"
    with rasterio.open(png, "w", driver="PNG", width=70, height=50, count=3, dtype="uint8") as dst:
        dst.write(random_image((3, 50, 70), dtype="uint8"))
    pkg = make_ts_package(tmp_path / "pkg", bands=3, classes=2, tile=32)
    proc = segflow("run", "tile-infer", "-i", png, "-o", tmp_path / "o", "-m", pkg, "-q")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    with rasterio.open(tmp_path / "o" / "labels.tif") as ds:
        assert (ds.width, ds.height) == (70, 50) and ds.crs is None


def test_model_whose_bands_do_not_fit_the_scene(tmp_path: Path) -> None:
    pkg = make_ts_package(tmp_path / "pkg", bands=3, classes=2, tile=32)
    one_band = write_geotiff(tmp_path / "one.tif", random_image((1, 40, 40)))
    assert_one_line_error(segflow("run", "tile-infer", "-i", one_band, "-o", tmp_path / "o", "-m", pkg), 2,
                          "one.tif has 1 band but model", "reads 3 bands", "--model PATH")


def test_models_list_and_show() -> None:
    listed = segflow("models", "list")
    assert listed.returncode == 0 and "spectral-landcover" in listed.stdout and "ndwi-water" in listed.stdout
    shown = segflow("models", "show", "ndwi-water")
    assert shown.returncode == 0 and "green=band 2" in shown.stdout and "class 1: water" in shown.stdout


# ----------------------------------------------------------------------------- the README's main job


def test_sample_scene_writes_the_scene_and_its_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image, truth = tmp_path / "scene.tif", tmp_path / "truth.tif"
    code = main(["sample-scene", str(image), "--width", "256", "--height", "192", "--seed", "7",
                 "--truth", str(truth)])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert out == f"wrote {image} (256x192, bands {', '.join(BANDS)}) and truth {truth}\n"
    expected_image, expected_truth = synthesize_block(0, 0, 192, 256, seed=7)
    with rasterio.open(image) as ds:
        assert (ds.width, ds.height, ds.count) == (256, 192, len(BANDS))
        assert ds.crs is not None and ds.crs.to_epsg() == 32633
        assert ds.descriptions == BANDS and ds.dtypes == ("uint16",) * len(BANDS)
        pixels, transform = ds.read(), ds.transform
    with rasterio.open(truth) as ds:
        assert (ds.width, ds.height, ds.count, ds.dtypes) == (256, 192, 1, ("uint8",))
        assert ds.crs is not None and ds.crs.to_epsg() == 32633 and ds.transform == transform
        labels = ds.read(1)
    assert (pixels == expected_image).all(), "the file holds the library's scene of that seed"
    assert (labels == expected_truth).all()
    assert set(labels.ravel().tolist()) <= set(range(len(CLASSES)))


def test_demo_segments_a_small_scene_and_reports_iou_against_its_truth(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--size", "256", "--output", str(tmp_path / "demo")])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary, scene_line, iou_line = out.strip().splitlines()
    labels_path = tmp_path / "demo" / "result" / "labels.tif"
    assert f"{labels_path}" in summary and "windows evaluated" in summary
    assert scene_line == f"scene: {tmp_path / 'demo' / 'scene.tif'} (truth: {tmp_path / 'demo' / 'truth.tif'})"
    found = re.fullmatch(r"IoU against truth: (.*) \| mean IoU (\d\.\d{3})", iou_line)
    assert found, iou_line
    rows = [part.rsplit(" ", 1) for part in found.group(1).split(", ")]
    assert [name for name, _ in rows] == list(CLASSES)
    with rasterio.open(labels_path) as ds:
        pred = ds.read(1)
    with rasterio.open(tmp_path / "demo" / "truth.tif") as ds:
        truth = ds.read(1)
    assert pred.shape == truth.shape == (256, 256)
    ious = []
    for k, (_, printed) in enumerate(rows):  # the printed IoU equals numpy's |P ∩ T| / |P ∪ T|
        union = np.logical_or(pred == k, truth == k).sum()
        iou = np.logical_and(pred == k, truth == k).sum() / union
        assert abs(float(printed) - iou) <= 0.0005 + 1e-12, (k, printed, iou)
        ious.append(iou)
    assert abs(float(found.group(2)) - np.mean(ious)) <= 0.0005 + 1e-12
    assert np.mean(ious) > 0.95, "the trained demo model segments its own kind of scene"
