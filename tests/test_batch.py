"""The batch layer without Prefect: inbox discovery, the retry rule, settings, reports, and re-runs of one item."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from segflow.batch import (
    BatchReport,
    BatchSettings,
    Item,
    ItemReport,
    backoff,
    batch_settings,
    discover,
    infer_item,
    is_transient,
    scrub,
    summarize,
    write_report,
)
from segflow.batch.inbox import item_name, waiting
from segflow.batch.settings import move_password
from segflow.errors import ConfigError, DeliveryError, InputError, ModelError, OutputError

from .helpers import random_image, write_geotiff


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _dicom(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmread(get_testdata_file("CT_small.dcm")).save_as(path)
    return path


def test_a_folder_inbox_lists_rasters_volumes_and_dicom_series_with_stable_unique_names(tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    _touch(inbox / "a.tif")
    _touch(inbox / "2024" / "T33UVP.TIFF")
    _touch(inbox / "ct.nii.gz")
    _touch(inbox / "notes.txt")
    _touch(inbox / ".hidden.tif")
    _touch(inbox / ".partial" / "x.tif")
    _dicom(inbox / "patient1" / "series" / "1.dcm")
    _dicom(inbox / "patient1" / "series" / "2.dcm")
    items = discover(inbox)
    assert [(i.name, i.kind) for i in items] == [
        ("2024__T33UVP.TIFF", "raster"), ("a.tif", "raster"), ("ct.nii.gz", "nifti"), ("patient1__series", "dicom")]
    assert items[-1].source == str(inbox / "patient1" / "series")  # the series folder is one item
    assert discover(inbox) == items  # the same names every night
    _touch(inbox / "a.nii.gz")  # a new arrival with the same stem changes no other item's name
    assert [i.name for i in discover(inbox)] == ["2024__T33UVP.TIFF", "a.nii.gz", "a.tif", "ct.nii.gz",
                                                 "patient1__series"]


def test_paths_that_sanitise_alike_keep_distinct_names(tmp_path: Path) -> None:
    _touch(tmp_path / "x__y.tif")
    _touch(tmp_path / "x" / "y.tif")
    _touch(tmp_path / "my scene ü.tif")
    _touch(tmp_path / "my_scene_ü.tif")
    names = [i.name for i in discover(tmp_path)]
    assert len(set(names)) == 4, names
    assert "x__y.tif" in names and item_name("x/y.tif") == "x__y.tif"
    assert item_name("x__y.tif").startswith("x__y.tif-")  # "__" in a file name would read as a folder: hashed
    assert sorted(n.split("-")[0] for n in names if n.startswith("my")) == ["my_scene_.tif", "my_scene__.tif"]
    assert all(len(n.split("-")[1]) == 8 for n in names if n.startswith("my"))


def test_the_batch_output_and_other_segflow_outputs_inside_the_inbox_are_not_searched(tmp_path: Path) -> None:
    _touch(tmp_path / "a.tif")
    _touch(tmp_path / "out" / "a" / "labels.tif")
    _touch(tmp_path / "older" / "report.json")
    _touch(tmp_path / "older" / "b" / "labels.tif")
    _touch(tmp_path / "run" / "run.json")
    (tmp_path / "run" / "mask.zarr").mkdir()
    _touch(tmp_path / "run" / "labels.tif")
    assert [i.name for i in discover(tmp_path, exclude=[tmp_path / "out"])] == ["a.tif"]


def test_linked_folders_are_followed_once(tmp_path: Path) -> None:
    _touch(tmp_path / "real" / "a.tif")
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "linked").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "loop").symlink_to(tmp_path / "real")
    assert [i.name for i in discover(tmp_path / "inbox")] == ["linked__a.tif"]


def test_patterns_choose_the_files_case_insensitively(tmp_path: Path) -> None:
    _touch(tmp_path / "a.TIF")
    _touch(tmp_path / "b.jp2")
    assert [i.name for i in discover(tmp_path, ["*.jp2"])] == ["b.jp2"]
    assert [i.name for i in discover(tmp_path)] == ["a.TIF"]


def test_a_list_inbox_takes_paths_relative_to_it_and_keeps_missing_ones_as_items(tmp_path: Path) -> None:
    _touch(tmp_path / "data" / "x.tif")
    _touch(tmp_path / "d1" / "T33.tif")
    _touch(tmp_path / "d2" / "T33.tif")
    outside = _touch(tmp_path.parent / f"{tmp_path.name}-elsewhere.tif")
    listing = tmp_path / "tonight.txt"
    listing.write_text(f"# tonight\n\ndata/x.tif\n  {outside}  \nmissing.tif\nd1/T33.tif\nd2/T33.tif\n"
                       "data/../data/x.tif\n")
    items = discover(listing)
    assert [i.name for i in items] == sorted(["d1__T33.tif", "d2__T33.tif", "data__x.tif", "missing.tif",
                                              item_name(str(outside).lstrip("/"))])
    assert next(i for i in items if i.name == "missing.tif").source == str(tmp_path / "missing.tif")
    tif = _touch(tmp_path / "scene.tif", b"II*\x00" + bytes(100))
    with pytest.raises(InputError, match="not a text file of paths"):
        discover(tif)


def test_files_still_arriving_wait_for_the_next_batch(tmp_path: Path) -> None:
    old = _touch(tmp_path / "old.tif")
    _touch(tmp_path / "new.tif")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert [i.name for i in discover(tmp_path, min_age=600)] == ["old.tif"]
    assert [i.name for i in waiting(tmp_path, min_age=600)] == ["new.tif"]


def test_an_empty_inbox_argument_is_refused_not_taken_as_the_current_folder() -> None:
    with pytest.raises(ConfigError, match="--inbox is empty"):
        discover("  ")


def test_a_missing_inbox_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"inbox .* does not exist"):
        discover(tmp_path / "nope")


class KilledWorker(Exception):  # the name dask.distributed gives a task whose workers died
    pass


@pytest.mark.parametrize(("exc", "transient"), [
    (DeliveryError("PACS down"), True),
    (DeliveryError("PACS refused", transient=False), False),
    (ConnectionResetError("reset"), True),
    (TimeoutError("slow"), True),
    (OSError(5, "Input/output error"), True),
    (KilledWorker("lost"), True),
    (InputError("truncated"), False),
    (ConfigError("bad"), False),
    (ModelError("unknown"), False),
    (OutputError("disk full"), False),
    (FileNotFoundError("gone"), False),
    (PermissionError("no"), False),
    (ValueError("bug"), False),
])
def test_only_transient_failures_are_retried(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_a_failure_raised_from_a_transient_one_is_transient() -> None:
    try:
        try:
            raise ConnectionRefusedError("down")
        except ConnectionRefusedError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert is_transient(outer)


def test_backoff_doubles_up_to_a_cap() -> None:
    assert backoff(4, 10) == [10, 20, 40, 80]
    assert backoff(3, 300) == [300, 600, 600]
    assert backoff(0, 5) == []


def test_a_password_in_a_batch_target_is_refused_and_the_cli_moves_it_to_the_environment() -> None:
    with pytest.raises(ConfigError, match="holds a password") as info:
        batch_settings(postgis="postgresql://gis:s3cret@db/gis?table=objects")
    assert "s3cret" not in str(info.value)
    env: dict[str, str] = {}
    url = move_password("postgresql://gis:s3%2Fcret@db:5433/gis?table=objects", env)
    assert url == "postgresql://gis@db:5433/gis?table=objects" and env == {"PGPASSWORD": "s3/cret"}
    assert move_password("postgresql://gis@db/gis?table=t", env) == "postgresql://gis@db/gis?table=t"
    assert batch_settings(postgis=url).postgis == url


def test_reports_hide_every_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "hunter2-db")
    report = BatchReport(inbox="in", output=str(tmp_path), settings={"postgis": "postgresql://u:pw-in-url@h/d"},
                         started_utc="2026-11-30T02:00:00+0000")
    report.items.append(ItemReport(name="a", source="a.tif", kind="raster", status="failed",
                                   error="PostGIS login with hunter2-db failed at postgresql://u:pw-in-url@h/d"))
    md, js = write_report(tmp_path, report)
    for path in (md, js, *sorted((tmp_path / "reports").iterdir())):
        text = path.read_text()
        assert "hunter2-db" not in text and "pw-in-url" not in text, path
    assert "postgresql://u:***@h/d" in md.read_text()
    assert json.loads(js.read_text())["counts"] == {"failed": 1}
    assert scrub("nothing secret") == "nothing secret"


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_geotiff(tmp_path_factory.mktemp("scene") / "s.tif", random_image((4, 90, 110), seed=4))


def test_an_item_is_computed_once_then_unchanged_and_a_new_export_option_reuses_the_masks(scene: Path,
                                                                                          tmp_path: Path) -> None:
    item = Item(name="s", source=str(scene), kind="raster")
    settings = BatchSettings(tile=32, chunk=64)
    first = infer_item(item, tmp_path, settings)
    assert first.status == "computed" and first.windows_evaluated > 0
    gpkg = tmp_path / "s" / "instances.gpkg"
    before = gpkg.read_bytes()
    again = infer_item(item, tmp_path, settings)
    assert again.status == "unchanged" and again.windows_evaluated == 0 and gpkg.read_bytes() == before
    labels = (tmp_path / "s" / "labels.tif").read_bytes()
    # a filter of the polygons changes: the exports are written again, the model does not run
    from segflow.features import VectorOptions

    bigger = infer_item(item, tmp_path, BatchSettings(tile=32, chunk=64, vector_options=VectorOptions(min_area=1e9)))
    assert bigger.windows_evaluated == 0 and bigger.chunks_computed == 0
    assert (tmp_path / "s" / "labels.tif").read_bytes() == labels
    run = json.loads((tmp_path / "s" / "run.json").read_text())
    assert run["parameters"]["vector_options"]["min_area"] == 1e9
    summary = summarize(item, tmp_path, BatchSettings(vector_options=VectorOptions(min_area=1e9)))
    assert all(c["objects"] == 0 for c in summary["classes"].values())  # every polygon is under 1e9 m²
    # a pixel parameter changes: computed again
    assert infer_item(item, tmp_path, BatchSettings(tile=48, chunk=64)).status == "computed"


def test_the_summary_counts_pixels_objects_and_area_per_class(scene: Path, tmp_path: Path) -> None:
    import rasterio

    item = Item(name="s", source=str(scene), kind="raster")
    infer_item(item, tmp_path, BatchSettings(tile=32))
    summary = summarize(item, tmp_path, BatchSettings())
    with rasterio.open(tmp_path / "s" / "labels.tif") as ds:
        labels, pixel = ds.read(1), abs(ds.transform.a * ds.transform.e)
    import geopandas

    names = list(geopandas.read_file(tmp_path / "s" / "instances.gpkg")["class_name"])  # GDAL's reading of the file
    for k, (name, row) in enumerate(summary["classes"].items()):
        assert row["pixels"] == int(np.count_nonzero(labels == k))
        assert row["extent"] == pytest.approx(row["pixels"] * pixel)
        assert row["objects"] == names.count(name)
    assert summary["unit"] == "m2"


def test_an_item_whose_run_was_killed_resumes_the_next_night(scene: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; from segflow.batch import Item, BatchSettings, infer_item; "
            "infer_item(Item('s', sys.argv[1], 'raster'), sys.argv[2], BatchSettings(tile=32, chunk=32))")
    killed = subprocess.run([sys.executable, "-c", code, str(scene), str(tmp_path)], capture_output=True,
                            env={**os.environ, "SEGFLOW_FAILPOINT": "chunk:3"}, timeout=300)
    assert killed.returncode == -9 and not (tmp_path / "s" / "run.json").exists()
    run = infer_item(Item("s", str(scene), "raster"), tmp_path, BatchSettings(tile=32, chunk=32))
    assert run.status == "resumed" and run.chunks_reused == 3 and run.chunks_computed == 12 - 3


@pytest.mark.parametrize(("relative", "name"), [
    ("a\\b.tif", "a__b.tif"), ("./a//b.tif", "a__b.tif"), ("/data/x/b.nii", "data__x__b.nii"), ("", "item")])
def test_item_names_of_odd_paths(relative: str, name: str) -> None:
    assert item_name(relative) == name


def test_a_hidden_or_lossy_name_gets_a_hash_and_no_leading_dot() -> None:
    hidden = item_name(".x.tif")
    assert hidden.startswith("x.tif-") and len(hidden) == len("x.tif-") + 8
    assert item_name("..") == item_name("..")  # stable
    assert item_name("..").startswith("item-")


def test_the_kind_of_an_item_follows_its_suffix(tmp_path: Path) -> None:
    for name in ("a.nii", "b.NII.GZ", "c.tif"):
        _touch(tmp_path / name)
    _dicom(tmp_path / "d" / "1.dcm")
    kinds = {i.name: i.kind for i in discover(tmp_path, ["*.nii", "*.nii.gz", "*.tif"])}
    assert kinds == {"a.nii": "nifti", "b.NII.GZ": "nifti", "c.tif": "raster", "d": "dicom"}


def test_only_real_outputs_are_skipped_and_the_search_goes_on_after_them(tmp_path: Path) -> None:
    _touch(tmp_path / "a_old" / "report.json")  # a batch's output, searched first (sorted)...
    _touch(tmp_path / "a_old" / "x" / "labels.tif")
    _touch(tmp_path / "b" / "x.tif")  # ... and the folders after it are still searched
    _touch(tmp_path / "c" / "run.json")  # a run.json without mask.zarr is not a segflow output
    _touch(tmp_path / "c" / "y.tif")
    _touch(tmp_path / "d.zarr" / "z.tif")  # zarr stores are not searched
    assert [i.name for i in discover(tmp_path)] == ["b__x.tif", "c__y.tif"]


def test_a_dicom_series_still_arriving_waits(tmp_path: Path) -> None:
    old = _dicom(tmp_path / "s" / "1.dcm")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    os.utime(tmp_path / "s", (an_hour_ago, an_hour_ago))
    _dicom(tmp_path / "s" / "2.dcm")  # a new slice: the series is not complete yet
    os.utime(tmp_path / "s", (an_hour_ago, an_hour_ago))  # the folder's own time says nothing: its files do
    assert discover(tmp_path, min_age=600) == [] and [i.name for i in waiting(tmp_path, min_age=600)] == ["s"]


def test_a_short_min_age_still_holds_back_a_file_written_just_now(tmp_path: Path) -> None:
    _touch(tmp_path / "now.tif")
    assert [i.name for i in waiting(tmp_path, min_age=1.0)] == ["now.tif"]
    assert waiting(tmp_path) == [] and [i.name for i in discover(tmp_path)] == ["now.tif"]  # no min-age: ready


def test_every_dicom_series_folder_is_found(tmp_path: Path) -> None:
    for patient in ("p1", "p2"):
        _dicom(tmp_path / patient / "ct" / "1.dcm")
    _touch(tmp_path / "z" / "scene.tif")
    assert [i.name for i in discover(tmp_path)] == ["p1__ct", "p2__ct", "z__scene.tif"]


def test_a_list_that_is_not_text_is_refused(tmp_path: Path) -> None:
    listing = _touch(tmp_path / "list.txt", b"\xff\xfe\x00bad")
    with pytest.raises(InputError, match=r"cannot read .*list\.txt as an inbox list .*one path per line"):
        discover(listing)


def test_backoff_refuses_negative_values_and_allows_no_pause() -> None:
    assert backoff(2, 0) == [0, 0]
    for args in ((-1, 1.0), (1, -1.0)):
        with pytest.raises(ValueError, match="must be >= 0"):
            backoff(*args)


def test_a_failure_during_the_handling_of_a_transient_one_is_transient_and_cycles_end() -> None:
    try:
        try:
            raise TimeoutError("slow")
        except TimeoutError:
            raise RuntimeError("while handling it")  # noqa: B904 - implicit chaining is the point
    except RuntimeError as outer:
        assert is_transient(outer)
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert not is_transient(a)  # a cycle of contexts ends
