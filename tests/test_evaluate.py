"""``segflow eval``: per-class scores of a prediction against truth, read block by block."""

from __future__ import annotations

import csv
import json
import math
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
from segflow.evaluate import EvalReport, evaluate

from .helpers import CRS, TRANSFORM, write_geotiff

TRUTH = np.array([[0, 0, 1, 1],
                  [0, 2, 2, 255],
                  [1, 1, 0, 0]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 1],
                 [0, 2, 1, 0],
                 [255, 1, 0, 0]], dtype=np.uint8)
# confusion (rows truth, cols pred): t0 -> p0 4, p1 1; t1 -> p1 3; t2 -> p1 1, p2 1 (255s skipped)
EXPECTED: dict[str, list[float]] = {
    "iou": [4 / 5, 3 / 5, 1 / 2],
    "dice": [8 / 9, 6 / 8, 2 / 3],
    "precision": [1.0, 3 / 5, 1.0],
    "recall": [4 / 5, 1.0, 1 / 2],
    "support": [5, 3, 2],
}


def label_tif(path: Path, labels: np.ndarray, *, tags: dict[str, str] | None = None, **kw: Any) -> Path:
    write_geotiff(path, labels[None], **kw)
    if tags:
        with rasterio.open(path, "r+") as ds:
            ds.update_tags(**tags)
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
    assert report.mean_iou == pytest.approx((0.8 + 0.6 + 0.5) / 3)
    assert report.pixel_accuracy == pytest.approx(0.8) and report.pixels == 10
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
    assert report.mean_iou == pytest.approx((0.8 + 0.6 + 0.5) / 3), "absent classes do not count"
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
    assert report.rows[2].support == 0 and report.pixels == 8
    assert report.confusion == [[4, 1, 0], [0, 3, 0], [0, 0, 0]]
    unnamed = label_tif(tmp_path / "p2.tif", PRED)
    assert evaluate(unnamed, truth, ignore=[2]).confusion == [[4, 1], [0, 3]], "ignored labels are not classes"
    zero_nodata = label_tif(tmp_path / "t0.tif", TRUTH, nodata=0)
    assert evaluate(pred, zero_nodata).confusion[0] == [0, 0, 0], "truth nodata 0 is skipped"
    with pytest.raises(ConfigError, match="ignore value 300 is not a label"):
        evaluate(pred, truth, ignore=[300])
    with pytest.raises(ConfigError, match="block=0"):
        evaluate(pred, truth, block=0)


def test_block_size_does_not_change_the_numbers(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    truth = rng.integers(0, 4, size=(53, 71), dtype=np.uint8)
    pred = np.where(rng.random((53, 71)) < 0.7, truth, rng.integers(0, 4, size=(53, 71))).astype(np.uint8)
    truth[rng.random((53, 71)) < 0.05] = 255
    pred[:5, :9] = 255
    p = label_tif(tmp_path / "p.tif", pred, block=16)
    t = label_tif(tmp_path / "t.tif", truth, block=32)
    whole = evaluate(p, t)
    for block in (1, 5, 16, 50):
        part = evaluate(p, t, block=block)
        assert part.confusion == whole.confusion and part.pixels == whole.pixels
        assert [r.as_dict() for r in part.rows] == [r.as_dict() for r in whole.rows]


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
    assert "gdalwarp" in message and "-te 600000 5099970 600040 5100000 -tr 10 10" in message
    for needle in needles:
        assert needle in message


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


def test_report_outputs(pair: tuple[Path, Path], tmp_path: Path) -> None:
    report = evaluate(*pair)
    data = json.loads(report.to_json(tmp_path / "r.json").read_text())
    assert data["mean_iou"] == pytest.approx(report.mean_iou) and data["pixels"] == 10
    assert data["classes"][1] == {"class": "water", "iou": 0.6, "dice": 0.75, "precision": 0.6, "recall": 1.0,
                                  "support": 3}
    assert report.to_csv(tmp_path / "r.csv") == tmp_path / "r.csv"
    with (tmp_path / "r.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == ["bg", "water", "veg"] and float(rows[0]["iou"]) == pytest.approx(0.8)
    assert list(rows[0]) == ["class", "iou", "dice", "precision", "recall", "support"]
    table = report.format_table().splitlines()
    assert table[0].split() == ["class", "IoU", "Dice", "precision", "recall", "support"]
    assert table[2].split() == ["bg", "0.8000", "0.8889", "1.0000", "0.8000", "5"]
    assert len({len(line) for line in table[:6]}) == 1, "columns are aligned"
    assert "mean IoU 0.6333" in table[-1] and "pixel accuracy 0.8000" in table[-1]


def test_eval_command(pair: tuple[Path, Path], tmp_path: Path) -> None:
    pred, truth = pair
    result = CliRunner().invoke(eval_cmd, ["--pred", str(pred), "--truth", str(truth), "--json",
                                           str(tmp_path / "e.json"), "--csv", str(tmp_path / "e.csv"),
                                           "--ignore", "2"])
    assert result.exit_code == 0, result.output
    assert "water" in result.output and "mean IoU" in result.output
    assert json.loads((tmp_path / "e.json").read_text())["classes"][2]["support"] == 0
    assert (tmp_path / "e.csv").read_text().startswith("class,iou,dice,precision,recall,support\n")
    bad = CliRunner().invoke(eval_cmd, ["--pred", str(pred), "--truth", str(tmp_path / "missing.tif")])
    assert bad.exit_code != 0 and isinstance(bad.exception, InputError)
