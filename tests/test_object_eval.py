"""Object precision / recall / F1 against a truth vector file (``segflow eval --truth truth.gpkg``).

Counts are checked against scenes built so that every TP/FP/FN is known, against
``segflow.metrics.object_f1`` on whole arrays, and the IoU of every matched pair against shapely's
polygon IoU of the vector polygons.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import rasterio.features
import shapely
import shapely.affinity
from affine import Affine
from click.testing import CliRunner
from pyproj import Transformer
from rasterio.crs import CRS
from scipy import ndimage

from segflow.cli import main
from segflow.cli.evaluate import eval_cmd
from segflow.errors import ConfigError, InputError, OutputError
from segflow.evaluate import evaluate, evaluate_prediction
from segflow.io.mask_store import MaskStore
from segflow.labels import LABEL_NODATA
from segflow.metrics import object_f1
from segflow.object_eval import ObjectEvalReport, evaluate_objects

from .helpers import write_geotiff

NAMES = ("background", "building", "water")
UTM = "EPSG:32633"
T = Affine(10, 0, 500000, 0, -10, 5000000)


def run_folder(root: Path, labels: np.ndarray, transform: Affine = T, crs: str | None = UTM,
               min_area: float | None = None, chunk: int = 16) -> Path:
    """A tile-infer-like output folder holding only ``mask.zarr`` (and ``run.json`` with ``min_area``)."""
    root.mkdir(parents=True, exist_ok=True)
    attrs: dict[str, Any] = {"transform": list(transform)[:6], "run_fingerprint": "0" * 64}
    if crs is not None:
        attrs["crs"] = CRS.from_user_input(crs).to_wkt()
    store = MaskStore.create(root / "mask.zarr", labels.shape, (chunk, chunk), NAMES, save_scores=False, attrs=attrs)
    store.labels[:] = labels
    if min_area is not None:
        record = {"parameters": {"vectorize": "gpkg", "vector_options": {"min_area": min_area, "simplify": 0.0}}}
        (root / "run.json").write_text(json.dumps(record))
    return root


def rect(r0: int, r1: int, c0: int, c1: int, transform: Affine = T) -> shapely.Polygon:
    """Rows r0..r1 and columns c0..c1 (inclusive) as a polygon in map coordinates."""
    return to_map(shapely.box(c0, r0, c1 + 1, r1 + 1), transform)


def to_map(geometry: Any, transform: Affine) -> Any:
    """Pixel coordinates (col, row) to map coordinates."""
    return shapely.affinity.affine_transform(geometry, transform.to_shapely())


def write_truth(path: Path, geometry: list[Any], values: list[Any] | None, crs: str | None = UTM,
                column: str = "class_name", driver: str | None = None) -> Path:
    fields = [] if values is None else [column]
    data = [] if values is None else [np.asarray(values)]
    pyogrio.raw.write(str(path), geometry=shapely.to_wkb(np.asarray(geometry, dtype=object)), field_data=data,
                      fields=fields, crs=crs, geometry_type="Unknown", driver=driver)
    return path


def polygons_of(labels: np.ndarray, transform: Affine) -> dict[int, tuple[shapely.Polygon, int]]:
    """Every object (face-connected region of one class > 0) as ``{1 + flat index of first pixel: (polygon,
    class)}``, traced independently of segflow (scipy + GDAL's polygonizer)."""
    out = {}
    for c in np.unique(labels):
        if c in (0, LABEL_NODATA):
            continue
        ids, _ = ndimage.label(labels == c)
        for shape, value in rasterio.features.shapes(ids.astype(np.int32), mask=ids > 0, connectivity=4,
                                                     transform=transform):
            first = int(np.flatnonzero(ids.ravel() == value)[0])
            rings = shape["coordinates"]
            out[first + 1] = (shapely.Polygon(rings[0], rings[1:]), int(c))
    return out


# --------------------------------------------------------------------------- a scene with known counts


def known_scene() -> tuple[np.ndarray, list[shapely.Polygon], list[str]]:
    """Prediction labels and truth polygons whose matches are known by construction (see the asserts)."""
    labels = np.zeros((60, 80), np.uint8)
    b, w = 1, 2
    labels[2:12, 2:12] = b       # A 10x10; truth identical: IoU 1
    labels[2:10, 20:28] = b      # B 8x8; truth shifted 2 columns: 48 / 80 = 0.6
    labels[2:8, 40:46] = b       # C 6x6; truth shifted 3 columns: 18 / 54 = 1/3
    labels[20:25, 2:6] = b       # D; no truth: FP
    labels[20:24, 40:44] = b     # F 4x4 inside a 4x8 truth: IoU exactly 0.5
    labels[35:39, 2:10] = b      # G 4x8 = two 4x4 truths, each IoU exactly 0.5: one match
    labels[45:56, 30:71] = w     # W water; truth identical
    labels[45:51, 5:16] = w      # X water; no truth: FP
    truth = [rect(2, 11, 2, 11), rect(2, 9, 22, 29), rect(2, 7, 43, 48), rect(20, 25, 20, 25),  # A B C E(no pred)
             rect(20, 23, 40, 47), rect(35, 38, 2, 5), rect(35, 38, 6, 9), rect(45, 55, 30, 70)]  # F G1 G2 W
    classes = ["building"] * 7 + ["water"]
    return labels, truth, classes


def counts(report: ObjectEvalReport) -> dict[str, tuple[int, int, int, int, int]]:
    return {r.name: (r.truth, r.pred, r.tp, r.fp, r.fn) for r in [*report.rows, report.overall]}


@pytest.mark.parametrize("block", [7, 16, 2048])
def test_known_counts_at_iou_half_whatever_the_block(tmp_path: Path, block: int) -> None:
    labels, truth, classes = known_scene()
    run = run_folder(tmp_path / "run", labels)
    report = evaluate_objects(run, write_truth(tmp_path / "t.gpkg", truth, classes), block=block)
    assert counts(report) == {"building": (7, 6, 4, 2, 3), "water": (1, 2, 1, 1, 0), "all": (8, 8, 5, 3, 3)}
    building, water = report.rows
    assert (building.precision, building.recall, building.f1) == (4 / 6, 4 / 7, 8 / 13)
    assert report.overall.f1 == 10 / 16
    assert building.match_iou == pytest.approx((1 + 0.6 + 0.5 + 0.5) / 4, rel=1e-12)
    assert building.pixel_iou == pytest.approx(214 / (268 + 300 - 214), rel=1e-12)
    assert water.pixel_iou == pytest.approx(11 * 41 / (11 * 41 + 6 * 11), rel=1e-12)
    # the exact-half tie: G is matched once, to the lower truth row (G1 = row 5)
    rows = dict(zip(report.matches.truth_row.tolist(), report.matches.iou.tolist(), strict=True))
    assert rows == {0: 1.0, 1: 0.6, 4: 0.5, 5: 0.5, 7: 1.0}
    # each pair's prediction object by the 1-based raster index of its first pixel, and its truth's class
    pairs = dict(zip(report.matches.truth_row.tolist(), report.matches.pred_id.tolist(), strict=True))
    assert pairs == {0: 1 + 2 * 80 + 2, 1: 1 + 2 * 80 + 20, 4: 1 + 20 * 80 + 40, 5: 1 + 35 * 80 + 2,
                     7: 1 + 45 * 80 + 30}
    assert report.matches.class_id.tolist() == [1 if classes[r] == "building" else 2
                                                for r in report.matches.truth_row.tolist()]
    assert report.notes == []


def test_the_threshold_is_inclusive_and_below_half_is_greedy(tmp_path: Path) -> None:
    labels, truth, classes = known_scene()
    run = run_folder(tmp_path / "run", labels)
    path = write_truth(tmp_path / "t.gpkg", truth, classes)
    above = evaluate_objects(run, path, iou=0.51)
    assert counts(above)["building"] == (7, 6, 2, 4, 5)  # F and G fall to FP + FN
    low = evaluate_objects(run, path, iou=0.3)
    assert counts(low)["building"] == (7, 6, 5, 1, 2)  # C (1/3) matches too
    assert "greedy" in low.matching and "greedy" not in above.matching
    with pytest.raises(ConfigError, match="iou"):
        evaluate_objects(run, path, iou=0.0)


def test_identical_truth_scores_one_and_a_truth_in_wgs84_is_reprojected(tmp_path: Path) -> None:
    labels = blobs((70, 90), seed=5)
    run = run_folder(tmp_path / "run", labels)
    objects = polygons_of(labels, T)
    geometry = [g for g, _ in objects.values()]
    classes = [NAMES[c] for _, c in objects.values()]
    same = evaluate_objects(run, write_truth(tmp_path / "same.gpkg", geometry, classes))
    to_wgs84 = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    lonlat = [shapely.transform(g, lambda xy: np.column_stack(to_wgs84.transform(xy[:, 0], xy[:, 1])))
              for g in geometry]
    moved = evaluate_objects(run, write_truth(tmp_path / "wgs84.gpkg", lonlat, classes, crs="EPSG:4326"))
    for report in (same, moved):
        n = len(objects)
        assert counts(report)["all"] == (n, n, n, 0, 0)
        assert (report.overall.precision, report.overall.recall, report.overall.f1) == (1.0, 1.0, 1.0)
        assert all(r.pixel_iou == 1.0 for r in report.rows)
        assert sorted(report.matches.pred_id.tolist()) == sorted(objects)
    assert same.notes == [] and "reprojected from EPSG:4326" in moved.notes[0]


def blobs(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Random regions of classes 0..2 with holes and diagonal contacts, and a nodata corner."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), 1.6)
    labels = np.digitize(field, np.quantile(field, [0.45, 0.75])).astype(np.uint8)
    labels[: shape[0] // 6, : shape[1] // 7] = LABEL_NODATA
    return labels


@pytest.mark.parametrize(("seed", "transform"), [(1, T), (2, Affine(0.5, 0.2, 100, 0.1, -0.7, 50)),
                                                 (3, Affine(-3, 0, 0, 0, 3, 0))])
def test_counts_equal_whole_array_reference_and_ious_equal_shapely(tmp_path: Path, seed: int,
                                                                    transform: Affine) -> None:
    """Truth: the prediction's polygons shifted by a pixel offset (disjoint), every third one deleted.
    Objects crossing the grid's edge are scored on their part inside it, so shapely gets them clipped."""
    labels = blobs((64, 72), seed)
    run = run_folder(tmp_path / "run", labels, transform)
    objects = polygons_of(labels, transform)
    rng = np.random.default_rng(seed)
    shift = rng.integers(-2, 3, size=2)
    offset = Affine.translation(transform.a * shift[1] + transform.b * shift[0],
                                transform.d * shift[1] + transform.e * shift[0])
    kept = [(shapely.affinity.affine_transform(g, offset.to_shapely()), c)
            for k, (g, c) in enumerate(objects.values()) if k % 3]
    path = write_truth(tmp_path / "t.gpkg", [g for g, _ in kept], [c for _, c in kept], column="class_id")
    reports = [evaluate_objects(run, path, iou=iou, block=block) for iou, block in ((0.5, 13), (0.3, 2048))]
    # reference: whole arrays, metrics.object_f1 per class (greedy one-to-one at the same threshold)
    truth_ids = rasterio.features.rasterize([(g, k + 1) for k, (g, _) in enumerate(kept)], out_shape=labels.shape,
                                            transform=transform, dtype="int32")
    truth_class = np.array([0] + [c for _, c in kept])[truth_ids]
    footprint = to_map(shapely.box(0, 0, labels.shape[1], labels.shape[0]), transform)
    for report in reports:
        for row in report.rows:
            c = NAMES.index(row.name)
            pred = ndimage.label(labels == c)[0]
            ref = object_f1(pred, np.where(truth_class == c, truth_ids, 0), report.iou_threshold)
            assert (row.tp, row.fp, row.fn) == (ref.tp, ref.fp, ref.fn)
        assert report.overall.tp > 0
        for pred_id, truth_row, iou in zip(report.matches.pred_id, report.matches.truth_row, report.matches.iou,
                                           strict=True):
            a, b = objects[int(pred_id)][0], kept[int(truth_row)][0].intersection(footprint)
            assert iou == pytest.approx(a.intersection(b).area / a.union(b).area, rel=1e-9)


def test_overlapping_truth_polygons_count_every_pixel_for_each(tmp_path: Path) -> None:
    labels = np.zeros((30, 40), np.uint8)
    labels[5:15, 5:15] = 1
    run = run_folder(tmp_path / "run", labels)
    # t0 = the object; t1 overlaps it by 5 columns (50 shared pixels), drawn after it
    path = write_truth(tmp_path / "t.gpkg", [rect(5, 14, 5, 14), rect(5, 14, 10, 19)], ["building", "building"])
    report = evaluate_objects(run, path, block=8)
    assert counts(report)["building"] == (2, 1, 1, 0, 1)
    assert report.matches.iou.tolist() == [1.0]  # not 0.5, as if t1 had taken the shared pixels
    assert report.rows[0].pixel_iou == 100 / 150
    assert report.notes == ["50 pixels lie in more than one truth polygon (each counted in every one); matching "
                            "there is greedy"]


def test_min_area_of_the_run_and_truth_outside_the_grid_are_noted(tmp_path: Path) -> None:
    labels = np.zeros((30, 40), np.uint8)
    labels[0:2, 30:32] = 1  # 4 px = 400 m²: under the run's min_area, the first object in raster order
    labels[2:12, 2:12] = 1  # 100 px = 10000 m²
    labels[20:22, 20:22] = 1  # 4 px: under it too
    run = run_folder(tmp_path / "run", labels, min_area=1000.0)
    far = rect(100, 110, 100, 110)  # outside the grid
    path = write_truth(tmp_path / "t.gpkg", [rect(2, 11, 2, 11), far, rect(25, 28, 2, 5)], ["building"] * 3)
    report = evaluate_objects(run, path)
    assert counts(report)["building"] == (2, 1, 1, 0, 1)
    assert report.notes == [
        "2 prediction objects under min_area 1000 (the run's --min-area unless given) left out",
        "1 truth features cover no pixel centre of the prediction (outside it, empty or smaller than a pixel) and "
        "are left out"]
    assert counts(evaluate_objects(run, path, min_area=0))["building"] == (2, 3, 1, 2, 1)


def test_classes_without_names_are_numbered(tmp_path: Path) -> None:
    labels, truth, classes = known_scene()
    raster = tmp_path / "labels.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=80, height=60, count=1, dtype="uint8", crs=UTM,
                       transform=T, nodata=LABEL_NODATA) as ds:
        ds.write(labels[None])
    ids = write_truth(tmp_path / "ids.gpkg", truth, [1 if c == "building" else 2 for c in classes], column="class_id")
    for names in (None, ["background", "", "water"]):
        report = evaluate_objects(raster, ids, class_names=names)
        assert [r.name for r in report.rows] == ["class_1", "water" if names else "class_2"]
        assert counts(report)["all"] == (8, 8, 5, 3, 3)
    with pytest.raises(InputError, match=r"feature 7 is of class 2; object classes are 1\.\.1 "):
        evaluate_objects(raster, ids, class_names=["background", "building"])  # names must cover the truth's ids


def test_the_options_and_their_limits(tmp_path: Path) -> None:
    labels, truth, classes = known_scene()
    run = run_folder(tmp_path / "run", labels)
    path = write_truth(tmp_path / "t.gpkg", truth, classes)
    assert counts(evaluate_objects(run, path, iou=1.0))["all"] == (8, 8, 2, 6, 6), "IoU 1 is a threshold: A and W"
    assert counts(evaluate_objects(run, path, iou=1))["all"] == (8, 8, 2, 6, 6)
    assert evaluate_objects(run, path, iou=0.3).matching == "greedy one-to-one assignment by descending IoU"
    tiny = np.zeros((6, 8), np.uint8)
    tiny[1:4, 2:6] = 1
    one = evaluate_objects(run_folder(tmp_path / "tiny", tiny), write_truth(tmp_path / "one.gpkg", [rect(1, 3, 2, 5)],
                                                                             ["building"]), block=1)
    assert counts(one)["all"] == (1, 1, 1, 0, 0) and one.rows[0].pixel_iou == 1.0, "blocks of one pixel"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice"
        unmatched = evaluate_objects(tmp_path / "tiny", write_truth(tmp_path / "off.gpkg", [rect(4, 5, 0, 1)],
                                                                    ["building"]))
    assert counts(unmatched)["all"] == (1, 1, 0, 1, 1) and math.isnan(unmatched.overall.match_iou)
    for iou in (0, 0.0, -0.1, 1.0001, 2.0, math.nan, True, "0.5", None):
        with pytest.raises(ConfigError, match=rf"^iou={re.escape(repr(iou))}; expected a threshold in \(0, 1\], e\.g\. "
                                              r"--iou 0\.5$"):
            evaluate_objects(run, path, iou=iou)  # type: ignore[arg-type]
    for block in (0, -3, True, 2.0, "8"):
        with pytest.raises(ConfigError, match=rf"^block={re.escape(repr(block))}; expected a positive number of "
                                              r"pixels, e\.g\. 1024$"):
            evaluate_objects(run, path, block=block)  # type: ignore[arg-type]
    renamed = write_truth(tmp_path / "r.gpkg", truth, ["house" if c == "building" else "lake" for c in classes])
    report = evaluate_objects(run, renamed, class_names=["ground", "house", "lake"])
    assert [r.name for r in report.rows] == ["house", "lake"] and counts(report)["all"] == (8, 8, 5, 3, 3)
    # a min_area under one map unit still leaves out what is smaller (here nothing: a pixel is 100 m²)
    assert "0 prediction objects under min_area 0.5 (the run's --min-area unless given) left out" in \
        evaluate_objects(run, path, min_area=0.5).notes


def test_the_run_record_without_min_area_or_unreadable(tmp_path: Path) -> None:
    labels, truth, classes = known_scene()
    run = run_folder(tmp_path / "run", labels)
    path = write_truth(tmp_path / "t.gpkg", truth, classes)
    for record in ({"parameters": {"vectorize": "gpkg", "vector_options": {"simplify": 0.5}}},
                   {"parameters": {"vectorize": None, "vector_options": None}}, {"parameters": {}}):
        (run / "run.json").write_text(json.dumps(record))
        report = evaluate_objects(run, path)
        assert counts(report)["all"] == (8, 8, 5, 3, 3) and report.notes == [], record
    for text in ("{", json.dumps({"parameters": {"vector_options": {"min_area": "big"}}}), "[]"):
        (run / "run.json").write_text(text)
        with pytest.raises(InputError, match=rf"^{run}/run\.json is unreadable; re-run tile-infer to rewrite it, or "
                                             r"give the labels \(labels\.tif\) instead of the run folder$"):
            evaluate_objects(run, path)


def test_min_area_on_a_rotated_grid_and_at_the_limit(tmp_path: Path) -> None:
    """A pixel of a 10 m grid rotated 30 degrees is still 100 m²; an object of exactly min_area is kept."""
    rotated = T @ Affine.rotation(30)
    labels = np.zeros((30, 40), np.uint8)
    labels[2:12, 2:12] = 1  # 100 px = 10000 m²
    labels[20:22, 20:22] = 1  # 4 px = 400 m²
    run = run_folder(tmp_path / "run", labels, transform=rotated)
    path = write_truth(tmp_path / "t.gpkg", [rect(2, 11, 2, 11, rotated)], ["building"])
    for min_area, pred in ((300.0, 2), (400.0, 2), (401.0, 1)):
        assert counts(evaluate_objects(run, path, min_area=min_area))["building"][1] == pred, min_area


@pytest.mark.parametrize("suffix", ["fgb", "geojson", "shp", "parquet"])
def test_every_truth_format_gives_the_same_scores(tmp_path: Path, suffix: str) -> None:
    geopandas = pytest.importorskip("geopandas")
    labels, truth, classes = known_scene()
    run = run_folder(tmp_path / "run", labels)
    frame = geopandas.GeoDataFrame({"class": classes}, geometry=truth, crs=UTM)
    path = tmp_path / f"t.{suffix}"
    if suffix == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_file(path)
    assert counts(evaluate_objects(run, path))["all"] == (8, 8, 5, 3, 3)


def test_single_class_truth_and_refusals(tmp_path: Path) -> None:
    labels, truth, _ = known_scene()
    run = run_folder(tmp_path / "run", labels)
    bare = write_truth(tmp_path / "bare.gpkg", truth[:7], None)
    assert counts(evaluate_objects(run, bare, truth_class="building"))["all"] == (7, 6, 4, 2, 3)
    with pytest.raises(InputError, match="no class column"):
        evaluate_objects(run, bare)
    with pytest.raises(InputError, match=r"'roads'.*building"):
        evaluate_objects(run, bare, truth_class="roads")
    away = [shapely.affinity.translate(g, 1e6, 0) for g in truth]
    with pytest.raises(InputError, match=rf"^truth {tmp_path}/away\.gpkg lies outside the prediction "
                                         rf"{run}/mask\.zarr: its bounds"):
        evaluate_objects(run, write_truth(tmp_path / "away.gpkg", away, ["water"] * 8))
    with pytest.raises(InputError, match=rf"^prediction {tmp_path}/none does not exist; give a label GeoTIFF"):
        evaluate_objects(tmp_path / "none", bare)
    with pytest.raises(InputError, match="Point"):
        evaluate_objects(run, write_truth(tmp_path / "pts.gpkg", [shapely.Point(500010, 4999990)], ["water"]))
    bowtie = shapely.Polygon([(500000, 5000000), (500100, 4999900), (500100, 5000000), (500000, 4999900)])
    with pytest.raises(InputError, match=r"not a valid polygon.*makevalid"):
        evaluate_objects(run, write_truth(tmp_path / "bow.gpkg", [bowtie], ["water"]))
    with pytest.warns(UserWarning, match="crs"):
        no_crs = write_truth(tmp_path / "nocrs.gpkg", truth, ["water"] * 8, crs=None)
    with pytest.raises(InputError, match="declares no CRS"):
        evaluate_objects(run, no_crs)
    with pytest.raises(ConfigError, match="--truth-class applies to a vector truth"):
        evaluate_prediction(run, tmp_path / "truth.tif", truth_class="water")
    with pytest.raises(ConfigError, match="--things apply to a raster prediction against a truth raster"):
        evaluate_prediction(run, bare, things=["water"])
    with pytest.raises(ConfigError, match="--ignore"):
        evaluate_prediction(run, bare, ignore=[3])


def test_cli_prints_and_writes_object_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels, truth, classes = known_scene()
    run = run_folder(tmp_path / "run", labels)
    path = write_truth(tmp_path / "t.gpkg", truth, classes)
    out_json, out_csv = tmp_path / "s.json", tmp_path / "s.csv"
    result = CliRunner().invoke(eval_cmd, ["--pred", str(run), "--truth", str(path), "--json", str(out_json),
                                           "--csv", str(out_csv)])
    assert result.exit_code == 0, result.output
    assert "objects at IoU >= 0.5" in result.output
    data = json.loads(out_json.read_text())
    assert data["overall"]["tp"] == 5 and data["overall"]["pixel_iou"] is None
    assert [c["class"] for c in data["classes"]] == ["building", "water"]
    lines = out_csv.read_text().splitlines()
    assert lines[0].startswith("class,truth_objects,pred_objects,tp,fp,fn") and lines[-1].startswith("all,8,8,5,3,3,")
    assert math.isclose(data["overall"]["f1"], 10 / 16)
    capsys.readouterr()
    assert main(["eval", "--pred", str(run), "--truth", str(path), "--truth-class", "roads"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segflow: error: --truth-class names class 'roads'") and len(err.splitlines()) == 1


KNOWN_TABLE = """\
objects at IoU >= 0.5 (unique: at IoU >= 0.5 the match count does not depend on the order)
class     truth  pred  TP  FP  FN  precision  recall      F1  match IoU  pixel IoU
----------------------------------------------------------------------------------
building      7     6   4   2   3     0.6667  0.5714  0.6154     0.6500     0.6045
water         1     2   1   1   0     0.5000  1.0000  0.6667     1.0000     0.8723
----------------------------------------------------------------------------------
all           8     8   5   3   3     0.6250  0.6250  0.6250     0.7200          -"""


def test_the_report_files_and_table_in_full(tmp_path: Path) -> None:
    """Every key, column and cell of the JSON, CSV and table a user gets for the known scene (values above:
    building 4/6, 4/7, 8/13, match IoU 2.6/4, pixel IoU 214/354; water 1/2, 1, 2/3, 1, 451/517)."""
    labels, truth, classes = known_scene()
    run = run_folder(tmp_path / "run", labels)
    report = evaluate_objects(run, write_truth(tmp_path / "t.gpkg", truth, classes))
    assert report.format_table() == KNOWN_TABLE
    noted = dataclasses.replace(report, notes=["one", "two"])
    assert noted.format_table() == KNOWN_TABLE + "\nnote: one\nnote: two"
    assert report.to_csv(tmp_path / "s.csv") == tmp_path / "s.csv"
    assert (tmp_path / "s.csv").read_bytes() == (
        b"class,truth_objects,pred_objects,tp,fp,fn,precision,recall,f1,match_iou,pixel_iou\n"
        b"building,7,6,4,2,3,0.6666666666666666,0.5714285714285714,0.6153846153846154,0.65,0.6045197740112994\n"
        b"water,1,2,1,1,0,0.5,1.0,0.6666666666666666,1.0,0.8723404255319149\n"
        b"all,8,8,5,3,3,0.625,0.625,0.625,0.72,\n")
    assert report.to_json(tmp_path / "s.json") == tmp_path / "s.json"
    text = (tmp_path / "s.json").read_text()
    assert text.startswith('{\n  "prediction": ') and text.endswith("\n}\n") and "NaN" not in text  # indented by 2

    def row(name: str, t: int, p: int, tp: int, precision: float, recall: float, f1: float, match: float,
            pixel: float | None) -> dict[str, Any]:
        return {"class": name, "truth_objects": t, "pred_objects": p, "tp": tp, "fp": p - tp, "fn": t - tp,
                "precision": precision, "recall": recall, "f1": f1, "match_iou": match, "pixel_iou": pixel}

    assert json.loads(text) == {
        "prediction": str(run / "mask.zarr"), "truth": str(tmp_path / "t.gpkg"), "iou_threshold": 0.5,
        "matching": "unique: at IoU >= 0.5 the match count does not depend on the order", "notes": [],
        "classes": [row("building", 7, 6, 4, 4 / 6, 4 / 7, 8 / 13, 0.65, 214 / 354),
                    row("water", 1, 2, 1, 0.5, 1.0, 2 / 3, 1.0, 451 / 517)],
        "overall": row("all", 8, 8, 5, 0.625, 0.625, 0.625, 0.72, None)}
    with pytest.raises(OutputError, match=r"^cannot write /proc/segflow-report\.json: .*; choose a writable location$"):
        report.to_json("/proc/segflow-report.json")  # a folder nothing can be created in, even by root


def test_a_run_scored_against_its_own_shifted_polygons(tmp_path: Path) -> None:
    """End to end: tile-infer --vectorize on a synthetic scene; truth = its instances.gpkg moved one pixel
    east. Matched IoUs equal shapely's on the run's own polygons, found by instance_id."""
    from segflow.synthetic import write_synthetic_scene
    from segflow.tile_infer import TileInferParams, tile_infer

    write_synthetic_scene(tmp_path / "scene.tif", width=200, height=170, seed=4)
    tile_infer(tmp_path / "scene.tif", tmp_path / "out", TileInferParams(vectorize="gpkg", chunk=64, tile=64))
    meta, _, wkb, (ids, names) = pyogrio.raw.read(str(tmp_path / "out" / "instances.gpkg"),
                                                  columns=["instance_id", "class_name"])
    polygons = dict(zip(ids.tolist(), shapely.from_wkb(wkb), strict=True))
    own = evaluate_objects(tmp_path / "out", tmp_path / "out" / "instances.gpkg", block=50)
    assert counts(own)["all"] == (len(ids),) * 3 + (0, 0)
    moved = [shapely.affinity.translate(g, 10.0, 0.0) for g in polygons.values()]
    shifted = write_truth(tmp_path / "moved.gpkg", moved, list(names), crs=meta["crs"])
    report = evaluate_objects(tmp_path / "out", shifted, block=50)
    assert 0 < report.overall.tp <= len(ids)
    with rasterio.open(tmp_path / "out" / "labels.tif") as ds:
        footprint = shapely.box(*ds.bounds)  # the part of a truth polygon on the grid is scored
    for pred_id, truth_row, iou in zip(report.matches.pred_id, report.matches.truth_row, report.matches.iou,
                                       strict=True):
        a, b = polygons[int(pred_id)], moved[int(truth_row)].intersection(footprint)
        assert iou == pytest.approx(a.intersection(b).area / a.union(b).area, rel=1e-9)


# --------------------------------------------------------------------------- against a truth label raster


def test_objects_against_a_label_raster_leave_out_unlabelled_and_ignored_truth(tmp_path: Path) -> None:
    """Where the truth is nodata (255) or an ignored value, neither raster has an object there."""
    pred = np.zeros((40, 50), np.uint8)
    pred[2:8, 2:8] = 1     # A: the truth's, IoU 1
    pred[2:8, 20:26] = 1   # B: the truth is unlabelled there
    pred[20:26, 2:8] = 1   # C: the truth holds an ignored value there
    pred[20:26, 20:26] = 1  # D: the truth says background: a false positive
    truth = np.zeros_like(pred)
    truth[2:8, 2:8] = 1
    truth[1:9, 19:27] = LABEL_NODATA
    truth[19:27, 1:9] = 3
    truth[30:34, 40:44] = 1  # E: not predicted, missed
    p = write_geotiff(tmp_path / "pred.tif", pred[None], nodata=LABEL_NODATA)
    t = write_geotiff(tmp_path / "truth.tif", truth[None], nodata=LABEL_NODATA)
    for block in (7, 2048):
        (row,) = evaluate(p, t, things=[1], ignore=[3], block=block, class_names=["bg", "building", "x", "y"]).objects
        assert (row.name, row.truth, row.pred, row.tp, row.fp, row.fn) == ("building", 2, 2, 1, 1, 1)
        assert row.match_iou == 1.0 and math.isnan(row.pixel_iou)
    (row,) = evaluate(p, t, things=[1], class_names=["bg", "building", "x", "y"]).objects
    assert (row.truth, row.pred, row.tp) == (2, 3, 1), "without --ignore 3, C is a prediction object"


def test_objects_against_a_label_raster_face_connected_and_per_class(tmp_path: Path) -> None:
    """Objects are face-connected (a diagonal touch makes two); each class is matched and counted on its own."""
    pred = np.zeros((40, 50), np.uint8)
    pred[2:6, 2:6] = 1     # P1 = T1
    pred[6:9, 6:9] = 1     # P2 touches P1 only at a corner: its own object
    pred[10:13, 30:33] = 1  # P4: no truth
    pred[20:24, 20:24] = 2  # P3: T3 is 2 columns wider (IoU 16 / 24)
    truth = np.zeros_like(pred)
    truth[2:6, 2:6] = 1
    truth[20:24, 20:26] = 2
    truth[28:38, 2:12] = 2  # T4: not predicted
    p = write_geotiff(tmp_path / "pred.tif", pred[None], nodata=LABEL_NODATA)
    t = write_geotiff(tmp_path / "truth.tif", truth[None], nodata=LABEL_NODATA)
    names = ["bg", "building", "water"]
    for block in (5, 2048):
        objects = evaluate(p, t, things=[1, 2], block=block, class_names=names).objects
        assert [(o.name, o.truth, o.pred, o.tp) for o in objects] == [("building", 1, 3, 1), ("water", 2, 1, 1)]
        assert [o.match_iou for o in objects] == [1.0, pytest.approx(16 / 24)]
    strict = evaluate(p, t, things=[1, 2], iou=0.7, class_names=names).objects
    unnamed = evaluate(p, t, things=[2, 3], class_names=names).objects  # a thing class beyond the names
    assert [(o.name, o.truth, o.pred, o.tp) for o in unnamed] == [("water", 2, 1, 1), ("class_3", 0, 0, 0)]
    assert [(o.name, o.tp, o.fp, o.fn) for o in strict] == [("building", 1, 2, 0), ("water", 0, 1, 2)]
