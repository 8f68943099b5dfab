"""``segflow eval``: per-class scores of a prediction against truth, read block by block."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import zarr
from click.testing import CliRunner
from rasterio.crs import CRS as RioCRS
from rasterio.transform import from_origin

from segflow.cli.evaluate import eval_cmd
from segflow.errors import ConfigError, InputError
from segflow.evaluate import EvalReport, evaluate, evaluate_prediction
from segflow.metrics import ConfusionMatrix, instances_from_mask, object_f1

from .helpers import CRS, TRANSFORM, write_geotiff

TRUTH = np.array([[0, 0, 1, 1],
                  [0, 2, 2, 255],
                  [1, 1, 0, 0]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 1],
                 [0, 2, 1, 0],
                 [255, 1, 0, 0]], dtype=np.uint8)
# truth 255 at (1, 3) is left out; the truth-1 pixel at (2, 0) has no prediction: a miss of class 1.
# confusion (rows truth, cols pred): t0 -> p0 4, p1 1; t1 -> p1 3 (+1 missed); t2 -> p1 1, p2 1
# class 1: tp 3, fp 2, fn 1 = 4 - 3
EXPECTED: dict[str, list[float]] = {
    "iou": [4 / 5, 3 / 6, 1 / 2],
    "dice": [8 / 9, 6 / 9, 2 / 3],
    "precision": [1.0, 3 / 5, 1.0],
    "recall": [4 / 5, 3 / 4, 1 / 2],
    "support": [5, 4, 2],
    "missed": [0, 1, 0],
}


def label_tif(path: Path, labels: np.ndarray, *, tags: dict[str, str] | None = None, **kw: Any) -> Path:
    write_geotiff(path, labels[None], **kw)
    if tags:
        with rasterio.open(path, "r+") as ds:
            ds.update_tags(**tags)
    return path


def plain_tif(path: Path, labels: np.ndarray, *, crs: str | None, transform: Any, nodata: int | None = 255) -> Path:
    """A label GeoTIFF with any combination of CRS and transform (None: leave it out)."""
    profile: dict[str, Any] = {"driver": "GTiff", "width": labels.shape[1], "height": labels.shape[0], "count": 1,
                               "dtype": "uint8", "nodata": nodata}
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(labels[None])
    return path


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    pred = label_tif(tmp_path / "pred.tif", PRED, tags={"class_names": "bg,water,veg"}, tiled=False)
    truth = label_tif(tmp_path / "truth.tif", TRUTH, tags={"classes": "background,water,vegetation,building"},
                      nodata=255, tiled=False)
    return pred, truth


def check_known(report: EvalReport, names: list[str]) -> None:
    assert [r.name for r in report.rows] == names
    for key, values in EXPECTED.items():
        np.testing.assert_allclose([getattr(r, key) for r in report.rows], values)
    assert report.mean_iou == pytest.approx((0.8 + 0.5 + 0.5) / 3)
    assert report.mean_dice == pytest.approx((8 / 9 + 6 / 9 + 2 / 3) / 3)
    assert report.pixel_accuracy == pytest.approx(8 / 11) and report.pixels == 11 and report.covered == 10
    assert report.coverage == pytest.approx(10 / 11)
    assert report.confusion == [[4, 1, 0], [0, 3, 0], [0, 1, 1]]


def test_known_scores_from_geotiffs(pair: tuple[Path, Path]) -> None:
    check_known(evaluate(*pair), ["bg", "water", "veg"])


def test_tile_infer_folder_and_zarr_predictions(pair: tuple[Path, Path], tmp_path: Path) -> None:
    _, truth = pair
    out = tmp_path / "run"
    out.mkdir()
    label_tif(out / "labels.tif", PRED, tags={"class_names": "bg,water,veg"})
    check_known(evaluate(out, truth), ["bg", "water", "veg"])
    group = zarr.open_group(str(tmp_path / "mask.zarr"), mode="w", zarr_format=3)
    group.attrs.update({"crs": RioCRS.from_string(CRS).to_wkt(), "transform": list(TRANSFORM)[:6],
                        "class_names": ["z0", "z1", "z2"], "nodata": 255})
    group.create_array("labels", shape=PRED.shape, dtype="uint8", chunks=(2, 3), fill_value=255)[:] = PRED
    check_known(evaluate(tmp_path / "mask.zarr", truth), ["z0", "z1", "z2"])
    only_zarr = tmp_path / "run2"
    only_zarr.mkdir()
    (tmp_path / "mask.zarr").rename(only_zarr / "mask.zarr")
    check_known(evaluate(only_zarr, truth, block=1), ["z0", "z1", "z2"])


def test_class_names_fall_back_and_classes_grow_with_observed_labels(tmp_path: Path) -> None:
    truth = label_tif(tmp_path / "t.tif", TRUTH, tags={"classes": "background,water,vegetation,building"})
    plain = label_tif(tmp_path / "p.tif", PRED)
    report = evaluate(plain, truth)
    assert [r.name for r in report.rows] == ["background", "water", "vegetation", "building"]
    assert math.isnan(report.rows[3].iou) and report.rows[3].support == 0
    assert report.mean_iou == pytest.approx((0.8 + 0.5 + 0.5) / 3), "absent classes do not count"
    bare_truth = label_tif(tmp_path / "t2.tif", TRUTH)
    assert [r.name for r in evaluate(plain, bare_truth).rows] == ["class_0", "class_1", "class_2"]
    seven = PRED.copy()
    seven[0, 0] = 6
    named = label_tif(tmp_path / "p7.tif", seven, tags={"class_names": "a,b,c"})
    assert [r.name for r in evaluate(named, bare_truth).rows] == ["a", "b", "c", "class_3", "class_4", "class_5",
                                                                   "class_6"]
    assert [r.name for r in evaluate(plain, bare_truth, class_names=["x", "y", "z"]).rows] == ["x", "y", "z"]


def test_ignore_values_and_declared_nodata(tmp_path: Path) -> None:
    pred = label_tif(tmp_path / "p.tif", PRED, tags={"class_names": "bg,water,veg"})
    truth = label_tif(tmp_path / "t.tif", TRUTH)
    report = evaluate(pred, truth, ignore=[2])
    assert report.rows[2].support == 0 and report.rows[2].ignored and report.pixels == 9
    # the truth-2 pixels are left out; the prediction 2 on a truth-0 pixel elsewhere would still count
    assert report.confusion == [[4, 1, 0], [0, 3, 0], [0, 0, 0]]
    assert math.isnan(report.rows[2].iou) and report.mean_iou == pytest.approx((4 / 5 + 3 / 5) / 2)
    assert report.ignored == (2,)
    zero_nodata = label_tif(tmp_path / "t0.tif", TRUTH, nodata=0)
    assert evaluate(pred, zero_nodata).confusion[0] == [0, 0, 0], "truth nodata 0 is skipped"
    with pytest.raises(ConfigError, match="ignore value 300 is not a label"):
        evaluate(pred, truth, ignore=[300])
    with pytest.raises(ConfigError, match="block=0"):
        evaluate(pred, truth, block=0)


def test_ignore_zero_leaves_the_mean_and_a_predicted_zero_is_an_error(tmp_path: Path) -> None:
    """Issue 13: ``--ignore 0`` kept background (IoU 0) in the mean, and skipped pixels predicted 0."""
    truth = np.zeros((20, 50), np.uint8)
    truth[5:15, 10:40] = 1  # 300 foreground pixels
    pred = truth.copy()
    pred[5:15, 10:20] = 0  # 100 of them predicted as the ignored background
    pred[0, :30] = 1  # 30 false positives on background truth: left out with that truth
    p = label_tif(tmp_path / "p.tif", pred, tags={"class_names": "background,building"})
    t = label_tif(tmp_path / "t.tif", truth)
    report = evaluate(p, t, ignore=[0], things=[])
    assert report.rows[0].ignored and math.isnan(report.rows[0].iou)
    assert report.rows[1].iou == pytest.approx(200 / 300) and report.rows[1].recall == pytest.approx(200 / 300)
    assert report.mean_iou == pytest.approx(200 / 300), "the ignored class leaves the mean"
    assert report.confusion == [[0, 0], [100, 200]]
    table = report.format_table()
    assert re.search(r"^background\s+ignored\s+-\s+-\s+-\s+0\s+0$", table, re.M), table
    assert "ignored truth values (left out; a prediction of an ignored class is an error): 0" in table


def test_block_size_does_not_change_the_numbers(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    truth = rng.integers(0, 4, size=(53, 71), dtype=np.uint8)
    pred = np.where(rng.random((53, 71)) < 0.7, truth, rng.integers(0, 4, size=(53, 71))).astype(np.uint8)
    truth[rng.random((53, 71)) < 0.05] = 255
    pred[:5, :9] = 255
    p = label_tif(tmp_path / "p.tif", pred, block=16)
    t = label_tif(tmp_path / "t.tif", truth, block=32)
    whole = evaluate(p, t, things=[1, 3])
    reference = ConfusionMatrix(4, ignore_index=255, no_prediction=255).update(pred, truth)
    assert whole.confusion == reference.matrix.tolist() and [r.missed for r in whole.rows] == reference.missed.tolist()
    assert whole.coverage == pytest.approx(reference.coverage()) and whole.coverage < 1
    for block in (1, 5, 16, 50):
        part = evaluate(p, t, block=block, things=[1, 3] if block > 1 else [])  # 1-pixel blocks: slow labelling
        assert part.confusion == whole.confusion and part.pixels == whole.pixels
        assert [r.as_dict() for r in part.rows] == [r.as_dict() for r in whole.rows]
        assert block == 1 or [o.as_dict() for o in part.objects] == [o.as_dict() for o in whole.objects]


# --------------------------------------------------------------------------- coverage (issue 13, defect 1)


def halves(tmp_path: Path, uncovered: slice) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    truth = rng.integers(0, 3, size=(40, 60), dtype=np.uint8)
    pred = truth.copy()
    pred[:, uncovered] = 255
    return (label_tif(tmp_path / "p.tif", pred, tags={"class_names": "a,b,c"}), label_tif(tmp_path / "t.tif", truth),
            pred, truth)


def test_a_half_nodata_prediction_is_scored_on_every_truth_pixel(tmp_path: Path) -> None:
    p, t, _, truth = halves(tmp_path, slice(30, None))
    report = evaluate(p, t)
    assert report.coverage == 0.5 and report.pixels == truth.size and report.covered == truth.size // 2
    for c, row in enumerate(report.rows):
        right = int((truth[:, 30:] == c).sum())  # never predicted: misses of class c
        assert row.missed == right and row.support == int((truth == c).sum())
        assert row.iou == pytest.approx((row.support - right) / row.support)  # was 1.0 over the covered half
        assert row.precision == 1.0
    assert report.mean_iou < 0.6 and report.pixel_accuracy == pytest.approx(0.5)
    with pytest.raises(InputError) as info:
        report.require_coverage(100.0, written=[tmp_path / "e.json"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"prediction covers 50.00 % of the truth pixels (1200 of 2400), below --min-coverage "
                              f"100 %; the report was still written (above, and in {tmp_path / 'e.json'})")
    assert "lower --min-coverage" in message
    report.require_coverage(50.0)


def test_eval_fails_below_min_coverage_after_writing_the_report(tmp_path: Path) -> None:
    p, t, _, _ = halves(tmp_path, slice(30, None))
    out = tmp_path / "e.json"
    result = CliRunner().invoke(eval_cmd, ["--pred", str(p), "--truth", str(t), "--json", str(out)])
    assert result.exit_code != 0 and isinstance(result.exception, InputError)
    assert "below --min-coverage 100 %" in str(result.exception)
    assert "coverage 50.00 % (1200 with no prediction, counted as missed)" in result.output
    data = json.loads(out.read_text())
    assert data["coverage"] == 0.5 and data["covered_pixels"] == 1200 and data["missed_pixels"] == 1200
    assert sum(c["missed"] for c in data["classes"]) == 1200
    ok = CliRunner().invoke(eval_cmd, ["--pred", str(p), "--truth", str(t), "--min-coverage", "50"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(eval_cmd, ["--pred", str(p), "--truth", str(t), "--min-coverage", "150"])
    assert isinstance(bad.exception, ConfigError) and "--min-coverage 150.0; expected a percentage" in str(
        bad.exception)


def test_an_all_nodata_prediction_fails(tmp_path: Path) -> None:
    p, t, _, truth = halves(tmp_path, slice(None))
    report = evaluate(p, t)
    assert report.coverage == 0.0 and report.pixels == truth.size and report.mean_iou == 0.0
    result = CliRunner().invoke(eval_cmd, ["--pred", str(p), "--truth", str(t)])
    assert isinstance(result.exception, InputError)
    assert str(result.exception).startswith("prediction covers 0.00 % of the truth pixels (0 of 2400)")
    nothing = label_tif(tmp_path / "t255.tif", np.full(truth.shape, 255, np.uint8))
    empty = CliRunner().invoke(eval_cmd, ["--pred", str(p), "--truth", str(nothing), "--min-coverage", "0"])
    assert isinstance(empty.exception, InputError) and "has no pixels to score" in str(empty.exception)


def test_coverage_just_below_full_is_not_shown_as_full(tmp_path: Path) -> None:
    truth = np.zeros((100, 100), np.uint8)
    pred = truth.copy()
    pred[0, 0] = 255
    report = evaluate(label_tif(tmp_path / "p.tif", pred), label_tif(tmp_path / "t.tif", truth))
    assert report.coverage == 0.9999 and "coverage 99.99 %" in report.format_table()
    with pytest.raises(InputError, match=r"covers 99\.99 % .*\(9999 of 10000\)"):
        report.require_coverage()


# --------------------------------------------------------------------------- object scores (defect 7)


def blobs(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Truth with rectangles of classes 1 and 3 (things) on 0/2, and a prediction that keeps some exactly,
    shifts, shrinks, splits, drops or invents others, with nodata holes in both."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, size=shape).astype(np.uint8) * 2
    pred = truth.copy()
    for _ in range(40):
        r, c = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
        h, w = rng.integers(2, 8, size=2)
        cls = rng.choice([1, 3])
        truth[r:r + h, c:c + w] = cls
        kind = rng.integers(0, 5)
        if kind == 0:
            pred[r:r + h, c:c + w] = cls
        elif kind == 1:
            pred[r + 1:r + h + 1, c:c + w] = cls
        elif kind == 2:
            pred[r:r + h, c:c + max(1, w // 3)] = cls
        elif kind == 3:
            pred[r:r + h, c:c + w] = cls
            pred[r:r + h, c + w // 2] = 0
    for _ in range(6):
        r, c = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
        pred[r:r + 3, c:c + 3] = rng.choice([1, 3])
    truth[rng.integers(0, shape[0]), :] = 255
    pred[:, rng.integers(0, shape[1])] = 255
    return pred, truth


def training_object_scores(pred: np.ndarray, truth: np.ndarray, things: list[int]) -> dict[int, tuple[int, ...]]:
    """The reference: training's object F1 on the whole arrays, prediction left out where the truth is."""
    masked = np.where(truth == 255, 255, pred)
    out = {}
    for k in things:
        s = object_f1(instances_from_mask(masked, k), instances_from_mask(truth, k))
        out[k] = (s.tp, s.fp, s.fn)
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_object_scores_equal_the_whole_array_reference_for_any_block(seed: int, tmp_path: Path) -> None:
    pred, truth = blobs((64, 90), seed)
    p = label_tif(tmp_path / "p.tif", pred, tags={"class_names": "bg,car,field,house"}, block=16)
    t = label_tif(tmp_path / "t.tif", truth, block=32)
    reference = training_object_scores(pred, truth, [1, 3])
    assert all(sum(v) > 10 for v in reference.values()) and any(v[1] or v[2] for v in reference.values())
    for block in (7, 16, 33, 2048):
        report = evaluate(p, t, block=block, things=["car", "3"])
        assert [o.name for o in report.objects] == ["car", "house"]
        assert {k: (o.tp, o.fp, o.fn) for k, o in zip((1, 3), report.objects, strict=True)} == reference
        for o in report.objects:
            assert o.f1 == pytest.approx(2 * o.tp / (2 * o.tp + o.fp + o.fn))


def test_an_object_cut_by_block_seams_is_one_object(tmp_path: Path) -> None:
    truth = np.zeros((12, 12), np.uint8)
    truth[2:10, 2:10] = 1
    pred = truth.copy()
    pred[2, 2:10] = 0  # IoU 56/64
    p, t = label_tif(tmp_path / "p.tif", pred), label_tif(tmp_path / "t.tif", truth)
    (o,) = evaluate(p, t, block=4, things=[1]).objects  # the square spans 3 x 3 blocks
    assert (o.truth, o.pred, o.tp, o.fp, o.fn) == (1, 1, 1, 0, 0) and o.match_iou == pytest.approx(56 / 64)


def test_thing_classes_come_from_the_run_model(tmp_path: Path) -> None:
    from segflow.models.package import resolve_package

    spec = resolve_package("demo-unet-2d").spec
    things = [k for k, c in enumerate(spec.classes) if c.kind == "thing"]
    assert things, "the demo package has a thing class"
    pred, truth = blobs((40, 60), 3)
    run = tmp_path / "run"
    run.mkdir()
    label_tif(run / "labels.tif", np.where(pred == 1, 0, pred).astype(np.uint8),
              tags={"class_names": ",".join(spec.class_names)})
    t = label_tif(tmp_path / "t.tif", np.where(truth == 1, 0, truth).astype(np.uint8))
    record = {"model": {"source": "builtin:demo-unet-2d", "classes": list(spec.class_names)}}
    (run / "run.json").write_text(json.dumps(record))
    for pred_path in (run, run / "labels.tif"):
        report = evaluate(pred_path, t)
        assert [o.name for o in report.objects] == [spec.class_names[k] for k in things] and not report.notes
    (run / "run.json").write_text(json.dumps({"model": {**record["model"], "classes": ["a", "b"]}}))
    report = evaluate(run, t)
    assert not report.objects and "now has classes" in report.notes[0]
    alone = label_tif(tmp_path / "alone.tif", pred)
    report = evaluate(alone, t)
    assert not report.objects and "is not a tile-infer run folder" in report.notes[0] and "--things" in report.notes[0]
    assert "note: no object scores" in report.format_table()
    with pytest.raises(ConfigError, match="thing class 'tree' is not a class of the prediction"):
        evaluate(alone, t, things=["tree"])


def test_object_scores_in_the_outputs(tmp_path: Path) -> None:
    pred, truth = blobs((40, 60), 4)
    p = label_tif(tmp_path / "p.tif", pred, tags={"class_names": "bg,car,field,house"})
    t = label_tif(tmp_path / "t.tif", truth)
    result = CliRunner().invoke(eval_cmd, ["--pred", str(p), "--truth", str(t), "--things", "car,house",
                                           "--min-coverage", "0", "--json", str(tmp_path / "e.json"),
                                           "--csv", str(tmp_path / "e.csv")])
    assert result.exit_code == 0, result.output
    assert "objects at IoU >= 0.5" in result.output and re.search(r"^house\s+\d+\s+\d+", result.output, re.M)
    data = json.loads((tmp_path / "e.json").read_text())
    assert [o["class"] for o in data["objects"]["classes"]] == ["car", "house"]
    assert data["objects"]["iou_threshold"] == 0.5
    with (tmp_path / "e.csv").open() as f:
        rows = {r["class"]: r for r in csv.DictReader(f)}
    assert rows["field"]["object_f1"] == "" and float(rows["car"]["object_f1"]) == pytest.approx(
        data["objects"]["classes"][0]["f1"])
    none = CliRunner().invoke(eval_cmd, ["--pred", str(p), "--truth", str(t), "--things", "none",
                                         "--min-coverage", "0"])
    assert none.exit_code == 0 and "objects at IoU" not in none.output and "note:" not in none.output


# --------------------------------------------------------------------------- grids and the fix (defect 6)


@pytest.mark.parametrize(("kw", "needles"), [
    ({"crs": "EPSG:4326"}, ["different CRS (prediction EPSG:32632, truth EPSG:4326)", "-t_srs EPSG:32632"]),
    ({"transform": from_origin(600010.0, 5100000.0, 10.0, 10.0)},
     ["different transform (prediction (10, 0, 600000, 0, -10, 5100000), truth (10, 0, 600010, 0, -10, 5100000))"]),
    ({"shape": (3, 5)}, ["different shape (prediction 3x4, truth 3x5 rows x cols)"]),
])
def test_mismatched_grids_are_refused(kw: dict[str, Any], needles: list[str], tmp_path: Path) -> None:
    pred = label_tif(tmp_path / "p.tif", PRED)
    shape = kw.pop("shape", TRUTH.shape)
    truth = label_tif(tmp_path / "t.tif", np.zeros(shape, np.uint8), **kw)
    with pytest.raises(InputError) as info:
        evaluate(pred, truth)
    message = str(info.value)
    assert "\n" not in message and "are not on the same grid" in message
    assert "gdalwarp" in message and "-te 600000 5099970 600040 5100000 -tr 10 10 -r near -dstnodata 255" in message
    for needle in needles:
        assert needle in message


SCENE = np.kron(np.random.default_rng(5).integers(0, 4, size=(6, 8)), np.ones((10, 10), int)).astype(np.uint8)
UTM = from_origin(600000.0, 5100000.0, 10.0, 10.0)


def _damaged(tmp_path: Path, case: str) -> tuple[Path, Path]:
    """(prediction, truth) files on grids that do not match, as users made them."""
    truth = plain_tif(tmp_path / "truth.tif", SCENE, crs=CRS, transform=UTM)
    pred = tmp_path / "pred.tif"
    if case == "prediction without CRS":
        plain_tif(pred, SCENE, crs=None, transform=UTM)
    elif case == "prediction without georeferencing":
        plain_tif(pred, SCENE, crs=None, transform=None)
    elif case == "truth without CRS":
        plain_tif(pred, SCENE, crs=CRS, transform=UTM)
        plain_tif(truth, SCENE, crs=None, transform=UTM)
    elif case == "prediction in another CRS":
        subprocess.run(["gdalwarp", "-q", "-t_srs", "EPSG:32633", "-r", "near", str(truth), str(pred)], check=True)
    elif case == "prediction labelled with a wrong CRS":
        plain_tif(pred, SCENE, crs="EPSG:32633", transform=UTM)
    elif case == "prediction without CRS on another grid":
        plain_tif(pred, SCENE[::2, ::2].copy(), crs=None, transform=from_origin(600000.0, 5100000.0, 20.0, 20.0))
    elif case == "truth without CRS on another grid":
        plain_tif(pred, SCENE[::2, ::2].copy(), crs=CRS, transform=from_origin(600000.0, 5100000.0, 20.0, 20.0))
        plain_tif(truth, SCENE, crs=None, transform=UTM)
    return pred, truth


def _follow(message: str, pred: Path, truth: Path, cwd: Path) -> tuple[Path, Path]:
    """Run the commands the message prints (the first option when it gives two); return the files to use."""
    first = message.split("; if the ")[0] if "one CRS is wrong" in message else message
    commands = re.findall(r"(?:gdal_translate|gdalwarp) .*?(?:_georef|_on_grid)\.tif", first)
    assert commands, message
    for command in commands:
        subprocess.run(command, shell=True, check=True, cwd=cwd, capture_output=True)
    use = dict((role, Path(path)) for path, role in re.findall(r"(?:use|and) (\S+) as the (prediction|truth)", first))
    return use.get("prediction", pred), use.get("truth", truth)


@pytest.mark.services
@pytest.mark.parametrize("case", ["prediction without CRS", "prediction without georeferencing", "truth without CRS",
                                  "prediction in another CRS", "prediction labelled with a wrong CRS",
                                  "prediction without CRS on another grid", "truth without CRS on another grid"])
def test_the_printed_fix_makes_eval_accept_the_files(case: str, tmp_path: Path) -> None:
    if shutil.which("gdalwarp") is None or shutil.which("gdal_translate") is None:
        pytest.skip("GDAL's command-line tools are not installed (Debian gdal-bin)")
    pred, truth = _damaged(tmp_path, case)
    result = CliRunner().invoke(eval_cmd, ["--pred", str(pred), "--truth", str(truth)])
    assert isinstance(result.exception, InputError), result.output
    message = str(result.exception)
    assert "\n" not in message and "are not on the same grid" in message
    fixed_pred, fixed_truth = _follow(message, pred, truth, tmp_path)
    assert (fixed_pred, fixed_truth) != (pred, truth)
    report = evaluate(fixed_pred, fixed_truth, things=[])
    assert report.coverage == 1.0 and report.pixels > 0.9 * SCENE.size * (0.25 if "another grid" in case else 1)
    if "another" not in case:  # same pixels: relabelling changes no number
        assert report.pixel_accuracy == 1.0 and report.pixels == SCENE.size
    else:  # resampled by nearest neighbour: blocks of 10 x 10 pixels survive almost whole
        assert report.mean_iou > 0.9


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    truth = label_tif(tmp_path / "t.tif", TRUTH)
    with pytest.raises(InputError, match="does not exist"):
        evaluate(tmp_path / "nope.tif", truth)
    floats = write_geotiff(tmp_path / "f.tif", PRED[None].astype("float32"))
    with pytest.raises(InputError, match="holds float32 values; expected integer class labels"):
        evaluate(floats, truth)
    big = write_geotiff(tmp_path / "b.tif", np.where(PRED == 1, 300, PRED.astype("uint16"))[None])
    with pytest.raises(InputError, match=r"holds label 300 .*expected class labels 0\.\.254"):
        evaluate(big, truth)
    two = write_geotiff(tmp_path / "two.tif", np.stack([PRED, PRED]))
    with pytest.raises(InputError, match="has 2 bands; expected a single-band label raster"):
        evaluate(two, truth)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"has no labels\.tif or mask\.zarr"):
        evaluate(empty, truth)
    with pytest.raises(ConfigError, match="iou=0; expected a threshold"):
        evaluate(label_tif(tmp_path / "p.tif", PRED), truth, iou=0)
    with pytest.raises(ConfigError, match="--min-coverage apply to a raster prediction against a truth raster"):
        evaluate_prediction(tmp_path / "p.tif", tmp_path / "truth.gpkg", min_coverage=50)


def test_report_outputs(pair: tuple[Path, Path], tmp_path: Path) -> None:
    report = evaluate(*pair)
    data = json.loads(report.to_json(tmp_path / "r.json").read_text())
    assert data["mean_iou"] == pytest.approx(report.mean_iou) and data["pixels"] == 11
    assert data["coverage"] == pytest.approx(10 / 11) and data["covered_pixels"] == 10
    assert data["classes"][1] == {"class": "water", "iou": 0.5, "dice": pytest.approx(6 / 9), "precision": 0.6,
                                  "recall": 0.75, "support": 4, "missed": 1, "ignored": False}
    assert report.to_csv(tmp_path / "r.csv") == tmp_path / "r.csv"
    with (tmp_path / "r.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == ["bg", "water", "veg"] and float(rows[0]["iou"]) == pytest.approx(0.8)
    assert list(rows[0]) == ["class", "iou", "dice", "precision", "recall", "support", "missed", "ignored",
                             "object_precision", "object_recall", "object_f1"]
    table = report.format_table().splitlines()
    assert table[0].split() == ["class", "IoU", "Dice", "precision", "recall", "support", "missed"]
    assert table[2].split() == ["bg", "0.8000", "0.8889", "1.0000", "0.8000", "5", "0"]
    assert table[3].split() == ["water", "0.5000", "0.6667", "0.6000", "0.7500", "4", "1"]
    assert len({len(line) for line in table[:6]}) == 1, "columns are aligned"
    assert "mean IoU 0.6000" in table[6] and "pixel accuracy 0.7273" in table[6] and "coverage 90.90 %" in table[6]


def test_eval_command(pair: tuple[Path, Path], tmp_path: Path) -> None:
    pred, truth = pair
    result = CliRunner().invoke(eval_cmd, ["--pred", str(pred), "--truth", str(truth), "--json",
                                           str(tmp_path / "e.json"), "--csv", str(tmp_path / "e.csv"),
                                           "--ignore", "2", "--min-coverage", "80"])
    assert result.exit_code == 0, result.output
    assert "water" in result.output and "mean IoU" in result.output
    assert json.loads((tmp_path / "e.json").read_text())["classes"][2]["support"] == 0
    assert (tmp_path / "e.csv").read_text().startswith("class,iou,dice,precision,recall,support,missed,ignored,")
    bad = CliRunner().invoke(eval_cmd, ["--pred", str(pred), "--truth", str(tmp_path / "missing.tif")])
    assert bad.exit_code != 0 and isinstance(bad.exception, InputError)


def test_an_ignored_class_leaves_the_means_of_a_volume_too(tmp_path: Path) -> None:
    """The same rule for ``segflow eval`` on volumes: ``--ignore 0`` kept background's Dice 0 in the mean."""
    nib = pytest.importorskip("nibabel")
    truth = np.zeros((8, 10, 12), np.uint8)
    truth[2:6, 2:8, 2:8] = 1  # 144 voxels
    pred = truth.copy()
    pred[2:6, 2:8, 2:4] = 0  # 48 of them predicted as the ignored background
    paths = []
    for name, zyx in (("p.nii.gz", pred), ("t.nii.gz", truth)):
        nib.save(nib.Nifti1Image(np.ascontiguousarray(zyx.transpose(2, 1, 0)), np.eye(4)), str(tmp_path / name))
        paths.append(tmp_path / name)
    report = evaluate_prediction(*paths, ignore=[0])
    assert report.mean_dice == pytest.approx(2 * 96 / (96 + 144))  # class 1 alone; was (0 + 0.8) / 2
    assert re.search(r"^class_0\s+ignored", report.format_table(), re.M)
    assert report.as_dict()["classes"][0]["ignored"] is True


def test_a_truth_that_puts_a_class_of_the_prediction_at_another_label_is_refused(tmp_path: Path) -> None:
    """A binary building model scored against sample-scene's four-class truth: label 1 is building in the prediction
    and water in the truth. Scores would compare buildings with water under the name building; refused in one line.
    Names that differ only in spelling (bg / background) are not judged."""
    pred = label_tif(tmp_path / "p.tif", (PRED > 0).astype(np.uint8), tags={"class_names": "background,building"})
    truth = label_tif(tmp_path / "t.tif", TRUTH, tags={"classes": "background,water,vegetation,building"})
    with pytest.raises(InputError, match=r"class 'building' is label 1 in the prediction .* but label 3 in the "
                                         r"truth .*remap the truth's labels") as caught:
        evaluate(pred, truth)
    assert "\n" not in str(caught.value)
    assert evaluate(pred, truth, class_names=["background", "building"]).rows[1].name == "building"  # the user says
    renamed = label_tif(tmp_path / "r.tif", PRED, tags={"class_names": "bg,water,veg"})
    assert [r.name for r in evaluate(renamed, truth).rows][:3] == ["bg", "water", "veg"]
