"""The catalogue of bad inputs: what segflow says, with which exit code, and that nothing is lost.

Every row of :data:`BAD` builds one bad input with code (tests/bad_inputs.py), runs the CLI in
this process as the ``segflow`` entry point does, and checks the three promises of README's
"Exit codes": the documented exit code (never 0, never 70 = a bug); exactly one line on stderr,
``segflow: error: ...``, naming the bad thing and how to fix it; and the outputs of an earlier
good run in the same output folder byte for byte as they were (for a bad output location: the
thing already there). :data:`ACCEPTED` lists inputs that look bad but are processed, with their
outputs checked against a reference.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from segflow.cli import main

from . import bad_inputs as b
from .helpers import random_image


def run(capfd: pytest.CaptureFixture[str], args: b.Args) -> tuple[int, str, str]:
    """The CLI in this process; stdout and stderr as the terminal would show them (C libraries included)."""
    code = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory) -> b.Earlier:
    return b.make_earlier(tmp_path_factory.mktemp("earlier"), lambda args: main([str(a) for a in args]))


@pytest.fixture
def case(tmp_path: Path, earlier: b.Earlier, monkeypatch: pytest.MonkeyPatch) -> Iterator[b.Case]:
    c = b.Case(tmp=tmp_path, earlier=earlier, monkeypatch=monkeypatch, out=tmp_path / "out")
    c.with_outputs(earlier.raster_out)
    yield c
    for cleanup in reversed(c.cleanups):
        cleanup()


P = pytest.param
BAD = [  # builder (tests/bad_inputs.py, or inline), exit code, words the one line must hold
    # ------------------------------------------------------------------ GeoTIFF (exit 2)
    P(b.geotiff_truncated, 2, ("the file is truncated or corrupt", "byte offset", "re-create or re-download"),
      id="geotiff-truncated"),
    P(b.geotiff_corrupt_block, 2, ("damaged.tif: the file is truncated or corrupt", "re-create or re-download"),
      id="geotiff-corrupt-block"),
    P(lambda c: c.tile_infer(c.named("noise.tif", np.random.default_rng(0).bytes(4000))),
      2, ("is not a raster GDAL can read", "expected a GeoTIFF"), id="geotiff-random-bytes"),
    P(lambda c: c.tile_infer(c.named("empty.tif", b"")),
      2, ("is empty (0 bytes)", "re-create or re-download"), id="geotiff-zero-bytes"),
    P(lambda c: c.tile_infer(c.geotiff("two.tif", random_image((2, 40, 40)))),
      2, ("two.tif has 2 bands but model 'spectral-landcover' reads 3 bands", "use a model that takes 2 bands"),
      id="geotiff-wrong-band-count"),
    P(lambda c: c.tile_infer(c.geotiff("plain.tif", random_image((4, 40, 40)), crs=None), "--vectorize",
                             "--vector-format", "geojson"),
      2, ("GeoJSON", "has no CRS", "choose --vector-format gpkg"), id="geotiff-no-crs-to-geojson"),
    P(b.option("--overlap", "1.5"), 2, ("overlap must be >= 0 and < 1, got 1.5", "e.g. --overlap 0.25"),
      id="geotiff-overlap-1.5"),
    P(b.option("--overlap", "-0.1"), 2, ("overlap must be >= 0 and < 1, got -0.1",), id="geotiff-overlap-negative"),
    P(b.option("--chunk", "0"), 2, ("chunk must be >= 1 pixel, got 0", "e.g. --chunk 2048"), id="geotiff-chunk-0"),
    P(b.option("--batch", "0"), 2, ("batch must be >= 1 window, got 0", "e.g. --batch 16"), id="geotiff-batch-0"),
    P(b.option("--tile", "0"), 2, ("tile must be >= 1 pixel, got 0", "e.g. --tile 512"), id="geotiff-tile-0"),
    P(b.option("--band", "nir=9"), 2, ("--band nir=9 is not a band of", "it has 4 bands",
                                       "--band nir=N with 1 <= N <= 4"), id="geotiff-band-beyond-raster"),
    P(lambda c: c.tile_infer(c.named("nowhere.tif")), 2, ("input file not found", "check the path"),
      id="geotiff-input-missing"),
    P(b.geotiff_directory, 2, ("is a directory with no DICOM images",
                               "give a raster file such as a GeoTIFF, or a folder holding one DICOM series"),
      id="geotiff-input-directory"),
    # ------------------------------------------------------------------ NIfTI (exit 2)
    P(b.nifti_truncated, 2, ("truncated or corrupt", "re-create or re-download"), id="nifti-truncated"),
    P(lambda c: c.tile_infer(b.nifti(c, "flat.nii.gz", (20, 18)), "-m", c.earlier.volume_model),
      2, ("flat.nii.gz", "is a 2D NIfTI image", "save it as a volume of one slice"), id="nifti-2d"),
    P(b.nifti_affine(np.zeros((4, 4))), 2, ("affine (from the sform) is singular", "fix the header's qform/sform"),
      id="nifti-singular-affine"),
    P(b.nifti_affine(np.diag([1.0, np.nan, 1.0, 1.0])), 2, ("is not finite", "fix the header's qform/sform"),
      id="nifti-nan-affine"),
    P(lambda c: c.tile_infer(b.nifti(c, "ct.nii.gz"), "-m", "spectral-landcover"),
      2, ("model 'spectral-landcover' is 2D", "ct.nii.gz", "choose a 3D model"), id="nifti-to-2d-model"),
    # ------------------------------------------------------------------ DICOM (exit 2)
    P(b.dicom_two_series, 2, ("holds 2 DICOM image series; pick one:",), id="dicom-two-series"),
    P(b.dicom_missing_slice, 2, ("1 slice missing between image 3", "add the missing images"),
      id="dicom-missing-slice"),
    P(b.dicom_uneven, 2, ("uneven slice spacing, 2.700 mm", "2.000 mm apart", "resample the series"),
      id="dicom-uneven-spacing"),
    P(b.dicom_empty, 2, ("no DICOM images in", "give the folder that holds the series' image files"),
      id="dicom-empty-folder"),
    P(b.dicom_not_dicom, 2, ("no DICOM images", "a folder holding one DICOM series"), id="dicom-not-dicom-files"),
    P(lambda c: c.tile_infer(c.earlier.series, "--series", "1.2.3", "-m", c.earlier.volume_model),
      2, ("DICOM series 1.2.3 is not in", "--series "), id="dicom-unknown-series"),
    # ------------------------------------------------------------------ model packages (exit 3)
    P(b.option("-m", "no-such-model"), 3, ("unknown model 'no-such-model'", "spectral-landcover",
                                           "model package directory"), id="model-unknown-name"),
    P(b.model_no_yaml, 3, ("is not a model package: it has no model.yaml",), id="model-no-model-yaml"),
    P(b.model_bad_yaml, 3, ("model.yaml is not valid YAML at line 3", "fix the syntax"), id="model-yaml-syntax"),
    P(lambda c: c.tile_infer(c.earlier.scene, "-m", b.package(c, "pkg", tile="large")),
      3, ("model.yaml is invalid", "tile", "valid integer"), id="model-yaml-wrong-type"),
    P(b.model_weights_mismatch, 3, ("weights model.safetensors do not match architecture 'unet'",
                                    "unexpected keys encoder.weight", "re-save the weights"),
      id="model-weights-mismatch"),
    P(b.model_weights_truncated, 3, ("model.safetensors is not a readable safetensors file", "re-save it"),
      id="model-weights-truncated"),
    P(b.model_weights_missing, 3, ("declares weights 'model.ts' but", "does not exist"), id="model-weights-missing"),
    P(b.model_weights_replaced, 3, ("differ from the ones the run started with (sha256 mismatch)",),
      id="model-weights-sha256-mismatch"),
    P(b.model_pickle_with_code, 3, ("refusing to load model.pt", "carries code (io.open)", "save a state dict"),
      id="model-pickle-with-code"),
    # ------------------------------------------------------------------ training configs (exit 2)
    P(lambda c: b.train(c, c.named("train.yaml", b"model:\n  name: x\n bands: [\n")),
      2, ("is not valid YAML at line 3", "fix the syntax"), id="config-yaml-syntax"),
    P(lambda c: b.train(c, b.train_config(c, epoch=3)), 2, ("epoch", "Extra inputs are not permitted"),
      id="config-unknown-key"),
    P(lambda c: b.train(c, b.train_config(c, batch_size="eight")), 2, ("batch_size", "valid integer", "'eight'"),
      id="config-wrong-type"),
    P(b.train_missing_file, 2, ("not found", "check the path in the training config"), id="config-missing-file"),
    P(lambda c: b.train(c, b.train_config(c, named=False, loss="bce")), 2,
      ("loss 'bce' does not fit a softmax model", "ce is its softmax counterpart", "losses for softmax outputs"),
      id="config-loss-for-another-output"),
    P(b.train_encoder_weights_builtin, 2, ("encoder weights need a network with one torchvision-layout encoder",
                                           "set the architecture's option encoder"),
      id="config-encoder-weights-builtin-encoder"),
    P(lambda c: b.train(c, c.named("absent.yaml")), 2, ("cannot read training config", "No such file or directory"),
      id="config-not-found"),
    # ------------------------------------------------------------------ outputs (exit 4)
    P(b.output_is_file, 4, ("exists and is not a directory", "choose a directory for --output"),
      id="output-is-a-file"),
    P(b.output_under_file, 4, ("cannot create output directory", "Not a directory", "choose another --output"),
      id="output-under-a-file"),
    P(b.output_read_only, 4, ("Permission denied", "writable --output"), id="output-read-only-folder"),
    P(b.output_read_only_fs, 4, ("Read-only file system", "writable --output"), id="output-read-only-filesystem"),
    P(b.output_disk_full, 4, ("not enough disk space", "free", "needed", "earlier outputs are unchanged"),
      id="output-disk-full"),
    P(b.output_disk_full_mid_run, 4, ("not enough disk space", "earlier outputs are unchanged"),
      id="output-disk-full-mid-run"),
    P(b.output_disk_full_injected, 4, ("not enough disk space", "earlier outputs are unchanged"),
      id="output-disk-full-injected"),
    P(b.output_locked, 4, ("is in use by another segflow run", "wait for it to finish or choose another --output"),
      id="output-locked"),
    # ------------------------------------------------------------------ services and devices
    P(b.postgis_down, 6, ("cannot connect to PostGIS", "check that the server is running"), id="postgis-down"),
    P(b.option("--postgis", "mysql://me@db/gis"), 2, ("is not a PostGIS address", "postgresql://user"),
      id="postgis-malformed-url"),
    P(b.option("--postgis", "postgresql://me@db/gis"), 2, ("names no table", "?table="), id="postgis-no-table"),
    P(b.pacs_down, 6, ("cannot store 1 instance(s)", "check that the PACS is running", "local outputs are complete"),
      id="pacs-down"),
    P(b.option("--pacs", "ftp://pacs/"), 2, ("--pacs 'ftp://pacs/' is not a PACS address",), id="pacs-malformed"),
    P(b.option("--pacs", "dimse://AE@127.0.0.1:4242"), 2, ("made only for a DICOM series input",),
      id="pacs-for-a-geotiff"),
    P(lambda c: c.tile_infer(c.new_scene(), "--dask-address", "scheduler"),
      2, ("--dask-address 'scheduler' is not a dask scheduler address", "missing port",
          "give one like tcp://scheduler:8786"), id="dask-malformed-address"),
    P(b.device_cuda, 5, ("device 'cuda' was asked for but CUDA is not available", "use --device cpu or auto"),
      id="device-cuda-missing"),
    P(b.option("--device", "tpu"), 5, ("unknown device 'tpu'", "auto, cpu, cuda or cuda:N"), id="device-unknown"),
]


@pytest.mark.parametrize(("build", "code", "needles"), BAD)
def test_a_bad_input_is_one_line_with_its_exit_code_and_loses_nothing(
        build: b.Builder, code: int, needles: tuple[str, ...], case: b.Case,
        capfd: pytest.CaptureFixture[str]) -> None:
    args = build(case)
    before = b.tree_digest(case.guard)
    assert before, "premise: the output location holds something to keep"
    got, out, err = run(capfd, args)
    lines = err.splitlines()
    assert got == code, err
    assert out == "", out
    assert len(lines) == 1 and err.endswith("\n"), err
    line = lines[0]
    assert line.startswith("segflow: error: "), line
    for needle in (*needles, *case.needles):
        assert needle in line, f"{needle!r} not in {line!r}"
    assert b.tree_digest(case.guard) == before, "earlier outputs changed"
    for check in case.checks:
        check(line)


def test_the_catalogue_covers_every_kind() -> None:
    ids = [str(p.id) for p in BAD]
    assert len(ids) == len(set(ids)) >= 32
    kinds = {i.split("-")[0] for i in ids}
    assert kinds >= {"geotiff", "nifti", "dicom", "model", "config", "output", "postgis", "pacs", "dask",
                     "device"}
    assert {p.values[1] for p in BAD} == {2, 3, 4, 5, 6}


# ----------------------------------------------------------------------------- inputs that look bad but are fine


def landcover(bands: np.ndarray) -> np.ndarray:
    """spectral-landcover's rule on (blue, green, red, nir) stored values, in float32 as README states it:
    water where NDWI > 0, else vegetation where NDVI > 0.4, else background; 255 where a read band is not finite."""
    green, red, nir = (bands[i].astype(np.float32) for i in (1, 2, 3))
    with np.errstate(all="ignore"):
        ndwi, ndvi = (green - nir) / (green + nir), (nir - red) / (nir + red)
    water = (green + nir != 0) & (ndwi > 0)
    vegetation = ~water & (nir + red != 0) & (ndvi > 0.4)
    labels = np.where(water, 1, np.where(vegetation, 2, 0)).astype(np.uint8)
    labels[~np.isfinite(np.stack([green, red, nir])).all(axis=0)] = 255
    return labels


def _float_scene() -> np.ndarray:
    """Float reflectances with a NaN (green), +inf (nir) and -inf (red) pixel, and a NaN in blue (not read)."""
    a = random_image((4, 40, 36), seed=8).astype(np.float32)
    a[1, 3, 4], a[3, 10, 10], a[2, 20, 5], a[0, 30, 30] = np.nan, np.inf, -np.inf, np.nan
    return a


ROTATED = Affine(10 * np.cos(0.3), 10 * np.sin(0.3), 600000.0, 10 * np.sin(0.3), -10 * np.cos(0.3), 5100000.0)
SHEARED = Affine(10.0, 3.0, 600000.0, 0.0, -10.0, 5100000.0)
ACCEPTED = [  # array, write_geotiff options, tile-infer options, effective tile
    P(random_image((4, 10, 12), seed=7), {}, (), [10, 12], id="geotiff-smaller-than-one-tile"),
    P(random_image((4, 1, 1), seed=7), {}, (), [1, 1], id="geotiff-one-pixel"),
    P(random_image((4, 40, 36), seed=7), {}, ("--tile", "1000000"), [40, 36], id="geotiff-huge-tile"),
    P(_float_scene(), {}, ("--tile", "16"), [16, 16], id="geotiff-nan-and-inf-pixels"),
    P(np.zeros((4, 40, 36), np.uint16), {"nodata": 0}, ("--tile", "16"), [16, 16], id="geotiff-all-nodata"),
    P(random_image((4, 40, 36), seed=7), {"crs": None}, ("--tile", "16"), [16, 16], id="geotiff-no-georeferencing"),
    P(random_image((4, 40, 36), seed=7), {"transform": ROTATED}, ("--tile", "16"), [16, 16], id="geotiff-rotated"),
    P(random_image((4, 40, 36), seed=7), {"transform": SHEARED}, ("--tile", "16"), [16, 16], id="geotiff-sheared"),
]


@pytest.mark.parametrize(("array", "written", "options", "tile"), ACCEPTED)
def test_an_input_that_looks_bad_but_is_fine_gives_the_right_labels_on_its_grid(
        array: np.ndarray, written: dict[str, object], options: tuple[str, ...], tile: list[int], tmp_path: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    from .helpers import write_geotiff

    scene = write_geotiff(tmp_path / "scene.tif", array, **written)  # type: ignore[arg-type]
    code, _, err = run(capfd, ["run", "tile-infer", "-q", "-i", scene, "-o", tmp_path / "out", *options])
    assert code == 0 and err == "", err
    expected = landcover(array)
    if "nodata" in written:  # every band the model reads holds the nodata value
        expected[(array[1:] == written["nodata"]).all(axis=0)] = 255
    else:
        assert len(np.unique(expected)) >= min(2, expected.size), "premise: the reference is not one flat class"
    with rasterio.open(scene) as src, rasterio.open(tmp_path / "out" / "labels.tif") as got:
        assert (got.width, got.height, got.crs, got.transform) == (src.width, src.height, src.crs, src.transform)
        np.testing.assert_array_equal(got.read(1), expected)
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["effective"]["tile"] == tile
    assert record["windows"]["evaluated"] == (0 if (expected == 255).all() else record["windows"]["total"])


def test_nan_and_inf_voxels_of_a_volume_are_nodata(tmp_path: Path, earlier: b.Earlier,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    import nibabel as nib

    volume = (np.random.default_rng(4).random((20, 18, 16)) * 200).astype(np.float32)  # (i, j, k)
    volume[2, 3, 4], volume[5, 6, 7], volume[9, 9, 9] = np.nan, np.inf, -np.inf
    nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "ct.nii.gz")
    code, _, err = run(capfd, ["run", "tile-infer", "-q", "-i", tmp_path / "ct.nii.gz", "-o", tmp_path / "out",
                               "-m", earlier.volume_model])
    assert code == 0 and err == "", err
    expected = np.where(volume > 100.0, 1, 0).astype(np.uint8)  # the threshold package's rule
    expected[~np.isfinite(volume)] = 255
    labels = nib.load(tmp_path / "out" / "labels.nii.gz")
    assert isinstance(labels, nib.Nifti1Image)
    got = np.asarray(labels.dataobj)
    np.testing.assert_array_equal(got, expected)
