"""Scoring a label volume against a truth volume (segflow.volume_eval), in-process on small files.

The metrics themselves are checked against MONAI in test_volume_metrics.py; here: what is opened (NIfTI,
a 3D mask.zarr, a run folder), the grid checks, the names, the means and every byte of the reports a
user gets.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segflow.errors import ConfigError, InputError, OutputError
from segflow.io.mask_store import MaskStore
from segflow.volume_eval import VolumeEvalReport, evaluate_volume, is_label_volume, open_label_volume
from segflow.volume_metrics import volume_scores

from . import test_volume_metrics as volume_metrics_tests

AFFINE = np.array([[2.0, 0.0, 0.0, -30.0],  # (z, y, x, 1) -> RAS mm: z 2 mm, y 1.5 mm, x 1 mm
                   [0.0, 1.5, 0.0, 12.0],
                   [0.0, 0.0, 1.0, 7.5],
                   [0.0, 0.0, 0.0, 1.0]])
SPACING = (2.0, 1.5, 1.0)


def save_nifti(path: Path, zyx: np.ndarray, zyx_affine: np.ndarray = AFFINE, slope: float | None = None,
               inter: float = 0.0) -> Path:
    return volume_metrics_tests.save_nifti(path, zyx, zyx_affine, slope, inter)


def save_store(path: Path, zyx: np.ndarray, names: list[str] | None = None, affine: np.ndarray | None = AFFINE
               ) -> Path:
    attrs = {} if affine is None else {"affine": affine.tolist()}
    store = MaskStore.create(path, zyx.shape, (4, 5, 6), names or ["a", "b"], save_scores=False, attrs=attrs)
    store.labels[:] = zyx
    return path


def pair() -> tuple[np.ndarray, np.ndarray]:
    """Two boxes: class 1 shifted one voxel along x (1 mm), class 2 predicted only; truth 255 in a corner."""
    truth = np.zeros((8, 10, 12), np.uint8)
    truth[2:6, 2:7, 2:8] = 1
    truth[0, 0, :3] = 255
    pred = np.zeros_like(truth)
    pred[2:6, 2:7, 3:9] = 1
    pred[7, 8:, 10:] = 2
    return pred, truth


# --------------------------------------------------------------------------- what is opened


def test_niftis_zarr_stores_and_run_folders_give_the_same_scores(tmp_path: Path) -> None:
    pred, truth = pair()
    t = save_nifti(tmp_path / "truth.nii.gz", truth)
    expected = volume_scores(pred, truth, SPACING, tolerance=1.0)
    store = save_store(tmp_path / "mask.zarr", pred, ["background", "liver", "spleen"])
    run = tmp_path / "run"
    run.mkdir()
    save_store(run / "mask.zarr", pred, ["background", "liver", "spleen"])
    nifti_run = tmp_path / "nifti_run"
    nifti_run.mkdir()
    save_nifti(nifti_run / "labels.nii.gz", pred)
    for source in (save_nifti(tmp_path / "pred.nii", pred), store, run, nifti_run):
        assert is_label_volume(source)
        report = evaluate_volume(source, t, tolerance=1.0, chunk=5)
        assert report.rows == expected, source
        assert report.spacing == SPACING and report.voxels == 8 * 10 * 12
        assert report.voxel_ml == pytest.approx(2 * 1.5 * 1 / 1000, rel=1e-12)
        assert report.truth == str(t)
    assert evaluate_volume(store, t).names == ["background", "liver", "spleen"]
    assert evaluate_volume(run, t).pred == str(run / "mask.zarr")
    assert evaluate_volume(nifti_run, t).pred == str(nifti_run / "labels.nii.gz")
    assert evaluate_volume(tmp_path / "pred.nii", t).names == ["class_0", "class_1", "class_2"]
    assert evaluate_volume(tmp_path / "pred.nii", t, class_names=["bg", "", "x", "y"]).names == [
        "bg", "class_1", "x", "y"], "explicit names; an empty one and classes seen nowhere are reported too"
    assert evaluate_volume(tmp_path / "pred.nii", store).names == ["background", "liver", "spleen"], \
        "the truth's names when the prediction has none"


def test_is_label_volume(tmp_path: Path) -> None:
    pred, _ = pair()
    assert not is_label_volume(tmp_path / "missing.nii.gz") and not is_label_volume(tmp_path)
    (tmp_path / "x.tif").write_bytes(b"")
    assert not is_label_volume(tmp_path / "x.tif")
    folder = tmp_path / "run"
    folder.mkdir()
    save_nifti(folder / "labels.nii.gz", pred)
    assert is_label_volume(folder)
    (folder / "labels.tif").write_bytes(b"")
    assert not is_label_volume(folder), "a raster run that also wrote a NIfTI is a raster run"
    flat = tmp_path / "flat.zarr"
    MaskStore.create(flat, (10, 12), (5, 6), ["a"], save_scores=False, attrs={})
    assert not is_label_volume(flat) and not is_label_volume(tmp_path / "flat_run")
    deep = tmp_path / "deep"
    deep.mkdir()
    save_store(deep / "mask.zarr", pred)
    assert is_label_volume(deep) and is_label_volume(deep / "mask.zarr")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "zarr.json").write_text("{not json")
    assert not is_label_volume(plain), "an unreadable store is no volume"


def test_zarr_stores_made_elsewhere(tmp_path: Path) -> None:
    import zarr

    pred, truth = pair()
    t = save_nifti(tmp_path / "truth.nii.gz", truth)
    group = zarr.open_group(str(tmp_path / "other.zarr"), mode="w")  # labels and an affine, no class names
    group.create_array("labels", shape=pred.shape, dtype="uint8", fill_value=0)[:] = pred
    group.attrs["affine"] = [[int(v) for v in row] for row in np.diag([2, 1, 1, 1])]  # integers are fine
    spaced = save_nifti(tmp_path / "spaced.nii", truth, np.diag([2.0, 1.0, 1.0, 1.0]))
    report = evaluate_volume(tmp_path / "other.zarr", spaced)
    assert report.names == ["class_0", "class_1", "class_2"] and report.spacing == (2.0, 1.0, 1.0)
    assert report.rows == volume_scores(pred, truth, (2.0, 1.0, 1.0))
    bare = tmp_path / "bare.zarr"  # a bare 3D array: a volume, but not a store segflow can read
    zarr.create_array(store=str(bare), shape=(4, 5, 6), dtype="uint8", fill_value=0)
    assert is_label_volume(bare)
    with pytest.raises(InputError, match="is not a segflow mask store"):
        evaluate_volume(bare, t)
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    assert not is_label_volume(empty) and list(empty.iterdir()) == [], "looking writes nothing"
    with pytest.raises(InputError, match=r"empty\.zarr is not a segflow mask store"):
        open_label_volume(empty)  # a .zarr folder is taken as a store, even without metadata
    for fmt in (3, 2):  # stores found by their metadata whatever their name
        store = tmp_path / f"store_v{fmt}"
        node = zarr.open_group(str(store), mode="w", zarr_format=fmt)  # type: ignore[arg-type]
        node.create_array("labels", shape=pred.shape, dtype="uint8", fill_value=0)[:] = pred
        assert is_label_volume(store), fmt
    degenerate = np.diag([2.0, 0.0, 1.0, 1.0])  # a zero voxel step
    with pytest.raises(InputError, match="not orthogonal"), warnings.catch_warnings():
        warnings.simplefilter("error")  # refused before any division by the zero step
        evaluate_volume(save_store(tmp_path / "flat_step.zarr", pred, affine=degenerate),
                        save_store(tmp_path / "flat_step_t.zarr", truth, affine=degenerate))


def test_scaled_niftis_read_as_integers_or_are_refused(tmp_path: Path) -> None:
    pred, truth = pair()
    t = save_nifti(tmp_path / "truth.nii.gz", truth)
    halves = save_nifti(tmp_path / "halves.nii", (pred * 2).astype(np.int16), slope=0.5)  # stored 2x, slope 0.5
    assert evaluate_volume(halves, t).rows == evaluate_volume(save_nifti(tmp_path / "p.nii", pred), t).rows
    save_nifti(tmp_path / "shifted.nii", pred.astype(np.int16) + 5, slope=1.0, inter=-5.0)  # stored + 5
    assert evaluate_volume(tmp_path / "shifted.nii", t).rows == evaluate_volume(tmp_path / "p.nii", t).rows
    for slope, inter in ((2.0, 0.0), (1.0, 1.0)):  # integer storage with a slope or an intercept is scaled
        save_nifti(tmp_path / "stored.nii", pred.astype(np.int16), slope=slope, inter=inter)
        expected = save_nifti(tmp_path / "expected.nii", (pred * slope + inter).astype(np.uint8))
        assert evaluate_volume(tmp_path / "stored.nii", t).rows == evaluate_volume(expected, t).rows
    floats = save_nifti(tmp_path / "float.nii", pred.astype(np.float32))
    assert evaluate_volume(floats, t).rows == evaluate_volume(tmp_path / "p.nii", t).rows
    bad = pred.astype(np.float32)
    bad[3, 4, 5] = 0.5
    with pytest.raises(InputError, match=r"^.*float2\.nii holds non-integer values in voxels \(0, 0, 0\)\.\.\(8, 10, "
                                         r"12\) \(z, y, x\); expected integer class labels$"):
        evaluate_volume(save_nifti(tmp_path / "float2.nii", bad), t)
    bad[3, 4, 5] = np.nan
    with pytest.raises(InputError, match="non-integer values"):
        evaluate_volume(save_nifti(tmp_path / "float3.nii", bad), t)


def test_refusals_name_the_input_and_the_fix(tmp_path: Path) -> None:
    pred, truth = pair()
    p, t = save_nifti(tmp_path / "pred.nii", pred), save_nifti(tmp_path / "truth.nii", truth)
    with pytest.raises(InputError, match=rf"^truth {tmp_path}/nothing\.nii does not exist; give a volume run folder, "
                                         r"a mask\.zarr or a label NIfTI$"):
        evaluate_volume(p, tmp_path / "nothing.nii")
    (tmp_path / "labels.csv").write_text("x")
    with pytest.raises(InputError, match=rf"^prediction {tmp_path}/labels\.csv is not a label volume; a volume "
                                         r"prediction is scored against a label NIfTI \(\.nii/\.nii\.gz\) or a 3D "
                                         r"mask\.zarr on its grid$"):
        evaluate_volume(tmp_path / "labels.csv", t)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=rf"^truth folder {empty} has no mask\.zarr or labels\.nii\.gz; give a "
                                         r"volume run folder$"):
        evaluate_volume(p, empty)
    two = np.stack([pred, pred], axis=-1)  # (z, y, x, 2) -> a 2-channel NIfTI
    image = nib.Nifti1Image(np.ascontiguousarray(two.transpose(2, 1, 0, 3)), AFFINE[:, [2, 1, 0, 3]])
    nib.save(image, str(tmp_path / "two.nii"))
    with pytest.raises(InputError, match=r"two\.nii has 2 channels; expected a single-channel label volume$"):
        open_label_volume(tmp_path / "two.nii")
    flat = tmp_path / "flat.zarr"
    MaskStore.create(flat, (10, 12), (5, 6), ["a"], save_scores=False, attrs={})
    with pytest.raises(InputError, match=r"flat\.zarr: labels have shape \(10, 12\); expected a 3D \(z, y, x\) label "
                                         r"volume$"):
        open_label_volume(flat)
    with pytest.raises(InputError, match=r"noaffine\.zarr has no 4x4 'affine' attribute \(voxel z, y, x -> mm\); "
                                         r"give the mask\.zarr of a volume run or its labels\.nii\.gz$"):
        open_label_volume(save_store(tmp_path / "noaffine.zarr", pred, affine=None))
    for bad in (-1, 256, True, 1.0, "0"):
        with pytest.raises(ConfigError, match=rf"^ignore value {bad!r} is not a label; expected an integer in "
                                              r"0\.\.255, e\.g\. --ignore 0$"):
            evaluate_volume(p, t, ignore=[bad])  # type: ignore[list-item]
    numpy_ints: list[int] = [np.uint8(0), 255]  # type: ignore[list-item]
    assert evaluate_volume(p, t, ignore=numpy_ints).ignored == (0, 255)


# --------------------------------------------------------------------------- the grid


def test_grids_must_match_within_the_tolerances(tmp_path: Path) -> None:
    pred, truth = pair()
    p = save_nifti(tmp_path / "pred.nii", pred)
    close = AFFINE.copy()
    close[:3, 3] += 0.9e-3  # within 1e-3 mm
    close[1, 1] *= 1 + 0.9e-5
    assert evaluate_volume(p, save_nifti(tmp_path / "close.nii", truth, close)).spacing == SPACING
    moved = AFFINE.copy()
    moved[1, 3] += 2.5
    message = (rf"^prediction {p} and truth {tmp_path}/moved\.nii are not on the same voxel grid: affines differ by up "
               r"to 2\.5 \(prediction \[\[2\.0, 0\.0, 0\.0, -30\.0\], \[0\.0, 1\.5, 0\.0, 12\.0\], \[0\.0, 0\.0, 1\.0, "
               r"7\.5\]\], truth \[\[2\.0, 0\.0, 0\.0, -30\.0\], \[0\.0, 1\.5, 0\.0, 14\.5\], \[0\.0, 0\.0, 1\.0, "
               r"7\.5\]\]\); resample the truth onto the prediction's grid with nearest neighbour \(e\.g\. "
               r"nibabel\.processing\.resample_from_to\(truth, labels\.nii\.gz, order=0\)\)$")
    with pytest.raises(InputError, match=message):
        evaluate_volume(p, save_nifti(tmp_path / "moved.nii", truth, moved))
    fine = AFFINE.copy()
    fine[:3, 3] = [0.123456, 0.0, 0.0]
    off = fine.copy()
    off[0, 3] += 2.5
    with pytest.raises(InputError, match=r"affines differ by up to 2\.5 \(prediction \[\[2\.0, 0\.0, 0\.0, "
                                         r"0\.1235\], .*truth \[\[2\.0, 0\.0, 0\.0, 2\.6235\], "):  # 4 decimals
        evaluate_volume(save_nifti(tmp_path / "fine.nii", pred, fine), save_nifti(tmp_path / "off.nii", truth, off))
    with pytest.raises(InputError, match=r"not on the same voxel grid: shape 8x10x12 vs 8x10x11 \(z, y, x\); "
                                         r"resample"):
        evaluate_volume(p, save_nifti(tmp_path / "cropped.nii", truth[:, :, :11]))
    both = save_nifti(tmp_path / "both.nii", truth[:, :, :11], moved)
    with pytest.raises(InputError, match=r"shape 8x10x12 vs 8x10x11 \(z, y, x\); affines differ by up to 2\.5 "):
        evaluate_volume(p, both)
    scaled = AFFINE.copy()
    scaled[0, 0] *= 1.001  # 2 mm in z is 2.002: relative 1e-3
    with pytest.raises(InputError, match=r"affines differ by up to 0\.002 "):
        evaluate_volume(p, save_nifti(tmp_path / "scaled.nii", truth, scaled))


def test_a_rotated_grid_is_fine_and_a_sheared_one_refused(tmp_path: Path) -> None:
    pred, truth = pair()
    c, s = math.cos(0.3), math.sin(0.3)
    rotated = AFFINE.copy()
    rotated[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ AFFINE[:3, :3]
    report = evaluate_volume(save_nifti(tmp_path / "p.nii", pred, rotated), save_nifti(tmp_path / "t.nii", truth,
                                                                                        rotated))
    assert report.spacing == pytest.approx(SPACING, rel=1e-6)  # NIfTI stores the sform as float32
    sheared = AFFINE.copy()
    sheared[0, 2] = 0.01  # cosine 0.01 between the z and x steps: beyond 1e-4
    p = save_nifti(tmp_path / "s.nii", pred, sheared)
    with pytest.raises(InputError, match=rf"^{p}: the voxel axes are not orthogonal \(sheared affine\); surface "
                                         r"distances need an orthogonal grid; resample both volumes onto one$"):
        evaluate_volume(p, save_nifti(tmp_path / "s2.nii", truth, sheared))
    nearly = AFFINE.copy()
    nearly[0, 2] = 5e-5  # cosine 5e-5: within
    evaluate_volume(save_nifti(tmp_path / "n.nii", pred, nearly), save_nifti(tmp_path / "n2.nii", truth, nearly))


# --------------------------------------------------------------------------- the report


def scored(tmp_path: Path, **kw: object) -> VolumeEvalReport:
    pred, truth = pair()
    names = ["background", "liver", "spleen"]
    tmp_path.mkdir(exist_ok=True)
    kw.setdefault("tolerance", 1.0)
    return evaluate_volume(save_store(tmp_path / "pred.zarr", pred, names), save_nifti(tmp_path / "t.nii", truth),
                           **kw)  # type: ignore[arg-type]


def test_the_report_in_full(tmp_path: Path) -> None:
    report = scored(tmp_path, halo=1.5)
    background, liver, spleen = report.rows
    # liver: 120 voxels each, 100 shared (Dice 200/240); the 1-voxel shift along x is 1 mm
    assert (liver.truth_voxels, liver.pred_voxels, liver.dice, liver.hd95, liver.hd95_state) == (
        120, 120, pytest.approx(100 / 120), 1.0, "exact")
    assert (spleen.dice, spleen.hd95, spleen.hd95_state, spleen.surface_dice) == (0.0, math.inf, "infinite", 0.0)
    assert report.mean_dice == pytest.approx(np.mean([background.dice, liver.dice, 0.0]))
    doc = report.as_dict()
    assert list(doc) == ["kind", "prediction", "truth", "voxels", "spacing_mm", "tolerance_mm", "halo_mm",
                         "mean_dice", "mean_surface_dice", "classes"]
    assert (doc["kind"], doc["voxels"], doc["spacing_mm"], doc["tolerance_mm"], doc["halo_mm"]) == (
        "volume", 960, [2.0, 1.5, 1.0], 1.0, 1.5)
    assert doc["classes"][1] == {
        "class": "liver", "label": 1, "dice": liver.dice, "hd95_mm": 1.0, "hd95_state": "exact",
        "surface_dice": liver.surface_dice, "truth_voxels": 120, "pred_voxels": 120,
        "truth_ml": 120 * report.voxel_ml, "pred_ml": 120 * report.voxel_ml,
        "truth_surface_voxels": liver.truth_surface, "pred_surface_voxels": liver.pred_surface, "ignored": False}
    assert doc["classes"][2]["hd95_mm"] is None and doc["classes"][2]["hd95_state"] == "infinite"
    assert doc["mean_surface_dice"] == pytest.approx(np.mean([r.surface_dice for r in report.rows]))
    path = report.to_json(tmp_path / "r.json")
    text = path.read_text()
    assert path == tmp_path / "r.json" and json.loads(text) == doc and text.startswith('{\n  "kind": "volume",\n')
    assert text.endswith("\n}\n") and "Infinity" not in text and "NaN" not in text
    csv_path = report.to_csv(tmp_path / "r.csv")
    lines = csv_path.read_bytes().decode().split("\n")
    assert csv_path == tmp_path / "r.csv" and lines[-1] == "" and "\r" not in "".join(lines)
    assert lines[0] == "class,dice,hd95_mm,hd95_state,surface_dice,truth_ml,pred_ml"
    ml = report.voxel_ml
    assert lines[2] == f"liver,{liver.dice!r},1.0,exact,{liver.surface_dice!r},{120 * ml!r},{120 * ml!r}"
    assert lines[3] == f"spleen,0.0,,infinite,0.0,0.0,{4 * ml!r}"
    for writer in ("to_json", "to_csv"):
        with pytest.raises(OutputError, match=r"^cannot write /proc/segflow-report: .*; choose a writable location$"):
            getattr(report, writer)("/proc/segflow-report")


def test_the_table(tmp_path: Path) -> None:
    # background: 837 truth voxels (3 unlabelled), 833 predicted; liver 120 and 120 shifted 1 mm along x;
    # spleen 4 voxels predicted only; one voxel is 0.003 mL
    assert scored(tmp_path, halo=1.5).format_table() == """\
class         Dice  HD95 mm  surface Dice@1mm  truth mL  pred mL
----------------------------------------------------------------
background  0.9737     1.00            0.9984      2.51     2.50
liver       0.8333     1.00            1.0000      0.36     0.36
spleen      0.0000      inf            0.0000      0.00     0.01
----------------------------------------------------------------
mean Dice 0.6023   mean surface Dice 0.6661   spacing 2x1.5x1 mm (z, y, x)   voxels 960"""
    lower = scored(tmp_path / "lower", halo=0.8, tolerance=0.5)
    assert lower.rows[1].hd95_state == "lower"
    lines = lower.format_table().split("\n")
    assert lines[3].split()[:3] == ["liver", "0.8333", ">"]
    assert lines[0].endswith("surface Dice@0.5mm  truth mL  pred mL")
    assert lines[-1] == "'> d': distances beyond the 0.8 mm halo; the true HD95 is larger (raise --halo)"


def test_ignored_labels_and_absent_classes(tmp_path: Path) -> None:
    report = scored(tmp_path, ignore=[0])
    assert report.ignored == (0,)
    liver, spleen = report.rows[1:]
    # ignoring 0 leaves out everything the truth calls background: the spleen is nowhere, the liver alone counts
    assert spleen.hd95_state == "undefined" and math.isnan(spleen.dice)
    assert (report.mean_dice, report.mean_surface_dice) == (liver.dice, liver.surface_dice)
    assert report.as_dict()["classes"][0]["ignored"] is True
    assert report.as_dict()["classes"][1]["ignored"] is False
    row = report.format_table().split("\n")[2]
    assert row.split() == ["background", "ignored", "-", "-", "-", f"{report.rows[0].pred_voxels * 0.003:.2f}"]
    zeros = np.zeros((4, 5, 6), np.uint8)
    none = evaluate_volume(save_nifti(tmp_path / "z.nii", zeros), save_nifti(tmp_path / "z2.nii", zeros),
                           class_names=["bg", "organ"], ignore=[0])
    assert [r.hd95_state for r in none.rows] == ["undefined", "undefined"]
    assert math.isnan(none.mean_dice) and math.isnan(none.mean_surface_dice)
    assert none.as_dict()["mean_dice"] is None and none.as_dict()["classes"][1]["dice"] is None
    table = none.format_table().split("\n")
    assert table[3].split() == ["organ", "-", "-", "-", "0.00", "0.00"]
    assert table[5].startswith("mean Dice -   mean surface Dice -   ")
