"""``segflow eval`` of a multi-label run: each class scored as its own present/absent map against a truth with
one 0/1 band per class, checked against numpy counts written out here."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio

from segflow.errors import ConfigError, InputError
from segflow.evaluate import evaluate
from segflow.labels import LABEL_NODATA
from segflow.tile_infer import TileInferParams, tile_infer

from .helpers import CRS, TRANSFORM, write_geotiff
from .test_multilabel import NAMES, NODATA, expected_planes, logits_package, overlapping_scene


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("mleval")
    bands, present, valid = overlapping_scene()
    scene = write_geotiff(root / "scene.tif", bands, nodata=NODATA)
    out = root / "out"
    tile_infer(scene, out, TileInferParams(model=str(logits_package(root / "pkg")), chunk=64, batch=8, device="cpu"))
    return out, expected_planes(present, valid)


def _truth(path: Path, planes: np.ndarray, names: tuple[str, ...] = NAMES) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=planes.shape[2], height=planes.shape[1], count=len(planes),
                       dtype="uint8", crs=CRS, transform=TRANSFORM, nodata=LABEL_NODATA) as ds:
        ds.write(planes)
        for k, name in enumerate(names):
            ds.set_band_description(k + 1, name)
    return path


def _reference(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per class: tp, fp, fn (missed included), missed, counted, over the truth's labelled pixels."""
    counted = truth != LABEL_NODATA
    none = counted & (pred == LABEL_NODATA)
    scored = counted & ~none
    tp = (scored & (pred == 1) & (truth == 1)).sum(axis=(1, 2))
    fp = (scored & (pred == 1) & (truth == 0)).sum(axis=(1, 2))
    missed = (none & (truth == 1)).sum(axis=(1, 2))
    fn = (scored & (pred == 0) & (truth == 1)).sum(axis=(1, 2)) + missed
    return {"tp": tp, "fp": fp, "fn": fn, "missed": missed, "counted": counted.sum(), "covered": scored.sum(),
            "right": (scored & (pred == truth)).sum()}


def _damaged_truth(planes: np.ndarray) -> np.ndarray:
    """The run's planes moved: the cloud truth shifted 7 px right, part of the shadow unlabelled, the building's
    second rectangle grown, and the prediction's nodata corner labelled (absent) in the first band only."""
    truth = planes.copy()
    truth[1] = LABEL_NODATA
    truth[1][:, 7:] = np.where(planes[1][:, :-7] == LABEL_NODATA, 0, planes[1][:, :-7])
    truth[2][40:70, :] = LABEL_NODATA
    truth[0][100:135, 10:55] = 1
    truth[0][:10, 150:] = 0
    return truth


def test_each_class_is_scored_as_its_own_map_and_matches_numpy(run: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    out, planes = run
    with rasterio.open(out / "labels.tif") as ds:
        pred = ds.read()
    assert np.array_equal(pred, planes)
    truth = _damaged_truth(planes)
    ref = _reference(pred, truth)
    path = _truth(tmp_path / "truth.tif", truth)
    reports = [evaluate(source, path, block=block) for source in (out, out / "mask.zarr") for block in (7, 2048)]
    for report in reports:
        assert report.label_kind == "multilabel" and [r.name for r in report.rows] == list(NAMES)
        assert report.pixels == ref["counted"] and report.covered == ref["covered"]
        for k, row in enumerate(report.rows):
            tp, fp, fn = (int(ref[n][k]) for n in ("tp", "fp", "fn"))
            assert row.iou == pytest.approx(tp / (tp + fp + fn))
            assert row.dice == pytest.approx(2 * tp / (2 * tp + fp + fn))
            assert row.precision == pytest.approx(tp / (tp + fp)) and row.recall == pytest.approx(tp / (tp + fn))
            assert row.support == tp + fn and row.missed == ref["missed"][k]
        assert report.mean_iou == pytest.approx(np.mean([r.iou for r in report.rows]))
        assert report.pixel_accuracy == pytest.approx(ref["right"] / ref["covered"])
        assert report.confusion == reports[0].confusion
    assert reports[0].rows[1].iou < 0.9 and reports[0].rows[2].iou == 1.0  # the shift shows; unlabelled rows do not
    # the building is the run's model's thing class: the grown rectangle still matches (IoU 1200 / 1575 >= 0.5)
    (building,) = reports[0].objects
    assert (building.name, building.truth, building.pred, building.tp) == ("building", 2, 2, 2)
    assert [o.tp for o in evaluate(out, path, iou=0.8).objects] == [1]


def test_missed_truth_lowers_coverage_and_the_command_fails_after_writing_the_report(
        run: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    out, planes = run
    truth = planes.copy()
    truth[:, :10, 150:] = 1  # the prediction's nodata corner, labelled present in every band
    path = _truth(tmp_path / "truth.tif", truth)
    report = evaluate(out, path)
    assert report.rows[2].missed == 200 and report.coverage == pytest.approx(1 - 600 / (3 * planes[0].size))
    done = subprocess.run([sys.executable, "-m", "segflow", "eval", "--pred", str(out), "--truth", str(path),
                           "--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "covers" in done.stderr
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["label_kind"] == "multilabel" and written["missed_pixels"] == 600
    # rows truth, columns prediction, over the pixels with a prediction: the run's planes are the truth there
    assert written["confusion_matrix"][0] == [[int((planes[0] == 0).sum()), 0], [0, int((planes[0] == 1).sum())]]


def test_a_truth_that_does_not_fit_is_refused_in_one_line(run: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    out, planes = run
    single = write_geotiff(tmp_path / "single.tif", planes[:1].astype(np.uint8), nodata=None)
    with pytest.raises(InputError, match="multi-label with 3 classes") as caught:
        evaluate(out, single)
    assert "\n" not in str(caught.value)
    swapped = _truth(tmp_path / "swapped.tif", planes[[1, 0, 2]], names=(NAMES[1], NAMES[0], NAMES[2]))
    with pytest.raises(InputError, match="reorder the truth's bands"):
        evaluate(out, swapped)
    bad = planes.copy()
    bad[0, 0, 0] = 3
    with pytest.raises(InputError, match=r"band 1.*0 \(absent\), 1 \(present\)"):
        evaluate(out, _truth(tmp_path / "bad.tif", bad))
    with pytest.raises(ConfigError, match="--ignore"):
        evaluate(out, _truth(tmp_path / "t.tif", planes), ignore=[0])


# --------------------------------------------------------------------------- small files, no run (fast)


def _ml_file(path: Path, planes: np.ndarray, names: tuple[str, ...] = ("cloud", "shadow", "building"),
             multilabel: bool = True) -> Path:
    _truth(path, planes, names)
    if multilabel:
        with rasterio.open(path, "r+") as ds:
            ds.update_tags(label_kind="multilabel")
    return path


def _small_planes() -> tuple[np.ndarray, np.ndarray]:
    """A 3-class prediction and a truth that differs in each class in a known way."""
    pred = np.zeros((3, 30, 41), dtype=np.uint8)
    pred[0, 2:12, 3:20] = 1
    pred[1, 8:25, 10:30] = 1
    pred[2, 3:9, 25:33] = 1  # building A: matches the truth exactly
    pred[2, 18:26, 2:8] = 1  # building B: the truth's is shifted 5 px (IoU 1/6)
    pred[:, 26:, 35:] = LABEL_NODATA  # no prediction in a corner
    truth = pred.copy()
    truth[:, 26:, 35:] = 0
    truth[0, 27:, 37:] = 1  # present where nothing was predicted: missed
    truth[0, 2:12, 15:25] = 1  # the cloud grown
    truth[1, :5] = LABEL_NODATA  # the shadow's top rows not labelled
    truth[1, 20:25, 10:30] = 0  # the shadow's bottom not there
    truth[2, 18:26, 2:8] = 0
    truth[2, 18:26, 7:13] = 1
    truth[2, :, 40] = LABEL_NODATA
    return pred, truth


@pytest.mark.parametrize("block", [7, 16, 2048])
def test_small_files_match_numpy_whatever_the_block(tmp_path: Path, block: int) -> None:
    pred, truth = _small_planes()
    ref = _reference(pred, truth)
    report = evaluate(_ml_file(tmp_path / "pred.tif", pred), _ml_file(tmp_path / "truth.tif", truth,
                                                                      multilabel=False),
                      block=block, things=["building"])
    assert report.label_kind == "multilabel" and [r.name for r in report.rows] == ["cloud", "shadow", "building"]
    assert report.pixels == ref["counted"] and report.covered == ref["covered"]
    assert report.pixel_accuracy == pytest.approx(ref["right"] / ref["covered"])
    for k, row in enumerate(report.rows):
        tp, fp, fn, missed = (int(ref[n][k]) for n in ("tp", "fp", "fn", "missed"))
        assert (row.iou, row.dice) == (pytest.approx(tp / (tp + fp + fn)), pytest.approx(2 * tp / (2 * tp + fp + fn)))
        assert (row.precision, row.recall) == (pytest.approx(tp / (tp + fp)), pytest.approx(tp / (tp + fn)))
        assert (row.support, row.missed) == (tp + fn, missed)
        counted = truth[k] != LABEL_NODATA
        scored = counted & (pred[k] != LABEL_NODATA)
        expected = [[int((scored & (truth[k] == t) & (pred[k] == p)).sum()) for p in (0, 1)] for t in (0, 1)]
        assert report.confusion[k] == expected
    assert report.rows[0].missed > 0 and report.mean_iou == pytest.approx(np.mean([r.iou for r in report.rows]))
    assert report.mean_dice == pytest.approx(np.mean([r.dice for r in report.rows]))
    (building,) = report.objects
    assert (building.name, building.truth, building.pred, building.tp) == ("building", 2, 2, 1)
    assert report.iou_threshold == 0.5 and report.notes[0] == (
        "multi-label: each class is scored as its own present/absent map; pixels, coverage and pixel accuracy count "
        "(pixel, class) decisions")
    assert (report.pred, report.truth) == (str(tmp_path / "pred.tif"), str(tmp_path / "truth.tif"))
    two = evaluate(tmp_path / "pred.tif", tmp_path / "truth.tif", things=["cloud", "building"], block=block).objects
    assert [(o.name, o.truth, o.pred, o.tp) for o in two] == [("cloud", 2, 1, 1), ("building", 2, 2, 1)]
    loose = evaluate(tmp_path / "pred.tif", tmp_path / "truth.tif", things=["building"], iou=0.05)
    assert [o.tp for o in loose.objects] == [2] and loose.iou_threshold == 0.05  # B's IoU is 8 / 88


def test_small_files_classes_absent_everywhere_leave_the_means(tmp_path: Path) -> None:
    pred, truth = _small_planes()
    pred[1] = np.where(pred[1] == LABEL_NODATA, LABEL_NODATA, 0)  # no shadow anywhere: NaN scores, left out of
    truth[1] = 0  # the means
    report = evaluate(_ml_file(tmp_path / "pred.tif", pred), _ml_file(tmp_path / "truth.tif", truth), block=16)
    assert np.isnan(report.rows[1].iou) and report.objects == []
    assert report.mean_iou == pytest.approx(np.mean([report.rows[0].iou, report.rows[2].iou]))
    assert report.mean_dice == pytest.approx(np.mean([report.rows[0].dice, report.rows[2].dice]))
    truth[1, 0, 0:5] = 1  # shadow in the truth only: 5 pixels predicted absent and 5 with no prediction
    truth[1, 27, 35:40] = 1
    report = evaluate(tmp_path / "pred.tif", _ml_file(tmp_path / "truth2.tif", truth), block=16)
    assert (report.rows[1].iou, report.rows[1].support, report.rows[1].missed) == (0.0, 10, 5)
    assert report.mean_iou == pytest.approx(np.mean([report.rows[0].iou, 0.0, report.rows[2].iou]))
    zeros = np.zeros_like(pred)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice"
        none = evaluate(_ml_file(tmp_path / "zeros.tif", zeros), _ml_file(tmp_path / "ztruth.tif", zeros))
    assert np.isnan(none.mean_iou) and np.isnan(none.mean_dice) and none.pixel_accuracy == 1.0
    nothing = np.full_like(pred, LABEL_NODATA)
    empty = evaluate(_ml_file(tmp_path / "none.tif", nothing), tmp_path / "truth.tif")
    assert np.isnan(empty.pixel_accuracy) and empty.covered == 0 and empty.pixels == report.pixels
    assert empty.mean_iou == 0.0 and [r.missed for r in empty.rows] == [r.support for r in empty.rows]
    single = write_geotiff(tmp_path / "single.tif", truth[:1], nodata=None)
    two = _ml_file(tmp_path / "two.tif", truth[:2], names=("cloud", "shadow"))
    for path, kind in ((single, "a single-band class-id raster"), (two, "2 bands")):
        with pytest.raises(InputError, match=rf"^the prediction {tmp_path}/pred\.tif is multi-label with 3 "
                                             rf"classes \(one 0/1 band each\) but the truth {path} has {kind}; give "
                                             r"a truth with one 0/1 band per class in the prediction's class order "
                                             r"\(255 where not labelled\)$"):
            evaluate(tmp_path / "pred.tif", path)
    swapped = _ml_file(tmp_path / "swapped.tif", truth[[1, 0, 2]], names=("shadow", "cloud", "building"))
    with pytest.raises(InputError, match=r"^the truth's bands are shadow, cloud, building but the prediction's "
                                         r"classes are cloud, shadow, building; reorder the truth's bands "
                                         r"\(gdal_translate -b \.\.\.\) to the prediction's class order$"):
        evaluate(tmp_path / "pred.tif", swapped)
    with pytest.raises(InputError, match=r"^class 'shadow' \(band 2\): .*multi-label bands hold 0 \(absent\), "
                                         r"1 \(present\) and 255 \(nodata\)$"):
        bad = truth.copy()
        bad[1, 3, 3] = 2
        evaluate(tmp_path / "pred.tif", _ml_file(tmp_path / "bad.tif", bad))
