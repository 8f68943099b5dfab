"""Volume metrics (Dice, HD95, surface Dice in mm) chunk by chunk, against MONAI, closed forms and a real run."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage

from segflow.cli import main
from segflow.cli.evaluate import eval_cmd
from segflow.errors import ConfigError, InputError
from segflow.evaluate import evaluate_prediction
from segflow.synthetic.volume import CLASSES, synthesize_volume
from segflow.tile_infer import TileInferParams, tile_infer
from segflow.volume_eval import VolumeEvalReport, evaluate_volume, is_label_volume
from segflow.volume_metrics import DirectedDistances, _edges, volume_scores

BIG = 1e4  # a halo larger than every test volume's diagonal: every distance exact


def blobs(shape: tuple[int, int, int], seed: int, classes: int = 3, sigma: float = 2.5) -> np.ndarray:
    """Smooth random multi-class labels: nested level sets of a smoothed noise field."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
    field /= field.std()
    labels = np.zeros(shape, dtype=np.uint8)
    for c in range(1, classes):
        labels[field > 0.6 * c - 0.4] = c
    return labels


def monai(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...], tau: float, k: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MONAI's Dice (empty truth and prediction -> NaN), HD95 and surface Dice per class, background included."""
    def onehot(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([a == c for c in range(k)])[None].astype(np.float32))

    p, t = onehot(pred), onehot(truth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dice = compute_dice(p, t, include_background=True, ignore_empty=False)[0].numpy()
        hd = compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=list(spacing))[0]
        nsd = compute_surface_dice(p, t, [tau] * k, include_background=True, spacing=list(spacing))[0]
    both_empty = np.array([not (pred == c).any() and not (truth == c).any() for c in range(k)])
    dice[both_empty] = np.nan
    return dice, hd.numpy(), nsd.numpy()


def check_against_monai(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float], tau: float,
                        **kw: Any) -> None:
    rows = volume_scores(pred, truth, spacing, tolerance=tau, halo=BIG, **kw)
    k = len(rows)
    dice, hd, nsd = monai(pred, truth, spacing, tau, k)
    got = np.array([[r.dice, r.hd95, r.surface_dice] for r in rows])
    assert all(r.hd95_state in ("exact", "undefined", "infinite") for r in rows)
    np.testing.assert_allclose(got[:, 0], dice, rtol=1e-6, equal_nan=True)
    finite = np.isfinite(got[:, 1])
    np.testing.assert_allclose(got[finite, 1], hd[finite], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[:, 2], nsd, rtol=1e-6, atol=1e-7, equal_nan=True)
    assert finite.any(), "the case must score some distances"


# --------------------------------------------------------------------------- against MONAI


@pytest.mark.parametrize("seed, spacing, tau", [(0, (2.5, 0.8, 1.1), 1.7), (1, (1.0, 1.0, 1.0), 1.3),
                                                (2, (0.6, 3.1, 0.9), 2.9), (3, (5.0, 0.7, 0.7), 0.95)])
def test_structured_masks_match_monai(seed: int, spacing: tuple[float, float, float], tau: float) -> None:
    pred, truth = blobs((22, 30, 34), seed), blobs((22, 30, 34), seed + 100)
    check_against_monai(pred, truth, spacing, tau, chunk=(9, 11, 13))


@pytest.mark.parametrize("seed", [0, 1])
def test_random_noise_masks_match_monai(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, 3, size=(11, 13, 15), dtype=np.uint8)
    truth = np.where(rng.random(pred.shape) < 0.7, pred, rng.integers(0, 3, size=pred.shape)).astype(np.uint8)
    check_against_monai(pred, truth, (1.8, 0.55, 1.25), 1.2, chunk=4)


def test_edges_are_monai_erosion_edges() -> None:
    mask = blobs((17, 19, 23), 5, classes=2) == 1
    mask[0, 3:9, 4:8] = True  # touching the array border
    expected = mask ^ ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1),
                                             border_value=0)
    assert np.array_equal(_edges(mask), expected)


# --------------------------------------------------------------------------- chunking and the halo


@pytest.mark.parametrize("chunk", [3, (4, 5, 6), (16, 7, 40), 1000])
def test_chunk_shape_never_changes_the_result(chunk: Any) -> None:
    pred, truth = blobs((20, 26, 31), 7), blobs((20, 26, 31), 8)
    whole = volume_scores(pred, truth, (2.0, 0.9, 0.7), tolerance=1.5, halo=BIG, chunk=1000)
    assert volume_scores(pred, truth, (2.0, 0.9, 0.7), tolerance=1.5, halo=BIG, chunk=chunk) == whole


@pytest.mark.parametrize("chunk", [5, (8, 13, 6), 1000])
def test_small_halo_is_exact_within_and_a_lower_bound_beyond(chunk: Any) -> None:
    pred, truth = blobs((20, 26, 31), 11), blobs((20, 26, 31), 12)
    spacing = (2.0, 0.9, 0.7)
    exact = volume_scores(pred, truth, spacing, tolerance=1.5, halo=BIG)
    assert all(r.hd95 > 3.0 for r in exact if r.hd95_state == "exact"), "the case must exceed the small halo"
    for halo in (3.0, 6.0, 12.0):
        for got, ref in zip(volume_scores(pred, truth, spacing, tolerance=1.5, halo=halo, chunk=chunk), exact,
                            strict=True):
            assert (got.dice, got.surface_dice, got.truth_surface, got.pred_surface) == (
                ref.dice, ref.surface_dice, ref.truth_surface, ref.pred_surface)
            if got.hd95_state == "exact":
                assert got.hd95 == pytest.approx(ref.hd95, rel=1e-12)
                assert got.hd95 <= halo
            else:
                assert got.hd95_state == "lower" and got.hd95 <= ref.hd95 + 1e-9 and ref.hd95 > 0


def shifted_boxes(axis: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((30, 34, 38), dtype=np.uint8)
    truth[5:19, 6:22, 7:25] = 1
    return np.roll(truth, d, axis=axis), truth


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("d", [1, 3, 6])
def test_boxes_offset_by_d_voxels_have_hd95_d_times_spacing(axis: int, d: int) -> None:
    spacing = (2.5, 0.75, 1.2)
    pred, truth = shifted_boxes(axis, d)
    expected = d * spacing[axis]
    for chunk in (1000, 7):
        box = volume_scores(pred, truth, spacing, tolerance=1.0, halo=16.0, chunk=chunk)[1]
        assert box.hd95_state == "exact" and box.hd95 == pytest.approx(expected, rel=1e-12)
        assert box.truth_surface == box.pred_surface == 14 * 16 * 18 - 12 * 14 * 16  # a 14x16x18 box's shell
        assert box.dice == pytest.approx(1 - d / (14, 16, 18)[axis])
    # a halo of exactly the offset keeps it: distances up to the halo are exact
    at_halo = volume_scores(pred, truth, spacing, tolerance=0.5, halo=expected, chunk=9)[1]
    assert at_halo.hd95_state == "exact" and at_halo.hd95 == pytest.approx(expected, rel=1e-12)
    # the halo below the offset: a lower bound, never above the truth
    capped = volume_scores(pred, truth, spacing, tolerance=0.5, halo=0.99 * expected, chunk=9)[1]
    assert capped.hd95_state == "lower" and capped.hd95 <= expected
    check_against_monai(pred, truth, spacing, 1.0)


def test_single_voxels_apart() -> None:
    """One edge voxel on each side: the nearest (only) point is found, not taken as missing."""
    pred, truth = np.zeros((9, 10, 11), dtype=np.uint8), np.zeros((9, 10, 11), dtype=np.uint8)
    truth[4, 5, 3], pred[4, 5, 6] = 1, 1
    for chunk in (1000, 4):
        row = volume_scores(pred, truth, (1.0, 0.5, 0.8), tolerance=2.0, halo=5.0, chunk=chunk)[1]
        assert (row.hd95, row.hd95_state, row.dice) == (pytest.approx(2.4), "exact", 0.0)
        assert (row.surface_dice, row.truth_surface, row.pred_surface) == (0.0, 1, 1)
        near = volume_scores(pred, truth, (1.0, 0.5, 0.8), tolerance=2.5, halo=5.0, chunk=chunk)[1]
        assert near.surface_dice == 1.0


def test_one_direction_beyond_the_halo_makes_hd95_a_lower_bound() -> None:
    truth = np.zeros((10, 10, 40), dtype=np.uint8)
    truth[2:8, 2:8, 2:8] = 1
    pred = truth.copy()
    pred[2:8, 2:8, 30:36] = 1  # a second box 22 mm away: half the prediction's surface beyond a 5 mm halo
    for a, b in ((pred, truth), (truth, pred)):
        row = volume_scores(a, b, (1.0, 1.0, 1.0), tolerance=1.0, halo=5.0)[1]
        assert row.hd95_state == "lower" and 0 < row.hd95 <= 5.0
        assert volume_scores(a, b, (1.0, 1.0, 1.0), tolerance=1.0, halo=30.0)[1].hd95_state == "exact"


def test_directed_percentile_and_counts_match_numpy() -> None:
    rng = np.random.default_rng(3)
    spacing = (1.7, 0.6, 0.9)
    offsets = rng.integers(-6, 7, size=(5000, 3))
    values = np.sqrt(((offsets * np.asarray(spacing)) ** 2).sum(axis=1))
    dd = DirectedDistances(spacing, halo=100.0)
    dd.add(offsets[:3000], 0)
    dd.add(offsets[3000:], 0)
    for q in (0, 50, 95, 99.9, 100):
        value, exact = dd.percentile(q)
        assert exact and value == pytest.approx(np.percentile(values, q), rel=1e-12)
    assert dd.within(3.0) == int((values <= 3.0).sum()) and dd.total == 5000
    beyond = DirectedDistances(spacing, halo=2.0)
    beyond.add(offsets[values <= 2.0], int((values > 2.0).sum()))
    value, exact = beyond.percentile(95)
    assert not exact and value <= np.percentile(values, 95)
    edge = DirectedDistances((1.0, 1.0, 1.0), halo=8.5)  # distances 0..8 mm and one beyond the halo
    edge.add(np.array([[0, 0, d] for d in range(9)]), 1)
    assert edge.percentile(100) == (8.5, False), "the last order statistic is the one beyond"
    assert edge.percentile(95) == (pytest.approx(8 + 0.55 * 0.5), False), "between the last exact one and beyond"
    assert edge.percentile(85) == (pytest.approx(7.65), True), "between two exact ones"
    assert edge.percentile(0) == (0.0, True) and edge.within(8.5) == 9
    chunks = DirectedDistances(spacing, halo=2.0)  # chunk by chunk: the counts beyond add up too
    for part in np.array_split(np.arange(5000), 4):
        chunks.add(offsets[part][values[part] <= 2.0], int((values[part] > 2.0).sum()))
    assert (chunks.beyond, chunks.total, chunks.percentile(95)) == (beyond.beyond, 5000, beyond.percentile(95))


# --------------------------------------------------------------------------- empty masks and label conventions


def test_empty_masks() -> None:
    truth = np.zeros((12, 12, 12), dtype=np.uint8)
    truth[3:8, 3:8, 3:8] = 1
    none = np.zeros_like(truth)
    pred_empty = volume_scores(none, truth, (1.0, 1.0, 1.0), num_classes=3)
    assert (pred_empty[1].dice, pred_empty[1].hd95, pred_empty[1].hd95_state, pred_empty[1].surface_dice) == (
        0.0, math.inf, "infinite", 0.0)
    truth_empty = volume_scores(truth, none, (1.0, 1.0, 1.0))[1]
    assert (truth_empty.dice, truth_empty.hd95, truth_empty.surface_dice) == (0.0, math.inf, 0.0)
    absent = pred_empty[2]
    assert absent.hd95_state == "undefined" and all(math.isnan(v) for v in (absent.dice, absent.hd95,
                                                                            absent.surface_dice))
    assert (absent.label, absent.truth_voxels, absent.pred_voxels, absent.truth_surface, absent.pred_surface) == (
        2, 0, 0, 0, 0)
    assert len(pred_empty) == 3, "num_classes reports classes seen nowhere"
    lone = np.zeros_like(truth)
    lone[5, 6, 7] = 2  # one voxel of a class the other volume lacks: one edge voxel, still infinitely far
    for row in (volume_scores(lone, truth, (1.0, 1.0, 1.0))[2], volume_scores(truth, lone, (1.0, 1.0, 1.0))[2]):
        assert (row.dice, row.hd95, row.hd95_state, row.surface_dice) == (0.0, math.inf, "infinite", 0.0)
        assert (row.truth_voxels + row.pred_voxels, row.truth_surface + row.pred_surface) == (1, 1)


def test_255_in_prediction_is_a_miss_and_in_truth_is_left_out() -> None:
    truth = np.zeros((10, 10, 10), dtype=np.uint8)
    truth[2:6, 2:6, 2:6] = 1
    pred = truth.copy()
    pred[2:4, 2:6, 2:6] = 255  # half the class not predicted
    row = volume_scores(pred, truth, (1.0, 1.0, 1.0))[1]
    assert (row.truth_voxels, row.pred_voxels, row.dice) == (64, 32, pytest.approx(2 * 32 / 96))
    unlabelled = truth.copy()
    unlabelled[2:4] = 255  # the same voxels unlabelled in the truth: left out of both
    row = volume_scores(pred, unlabelled, (1.0, 1.0, 1.0))[1]
    assert (row.truth_voxels, row.pred_voxels, row.dice, row.hd95) == (32, 32, 1.0, 0.0)
    ignored = volume_scores(pred, np.where(unlabelled == 255, 7, unlabelled).astype(np.uint8), (1.0, 1.0, 1.0),
                            ignore=[7])
    assert ignored[1] == row and len(ignored) == 2, "ignored labels are not classes"
    wide = volume_scores(pred.astype(np.int16), unlabelled.astype(np.int32), (1.0, 1.0, 1.0))
    assert wide[1] == row, "wider integer volumes hold 255 as nodata too"


def test_bad_arguments_are_refused() -> None:
    a = np.zeros((8, 8, 8), dtype=np.uint8)
    with pytest.raises(ConfigError, match=r"halo 1\.0 mm is smaller than the tolerance 2\.0"):
        volume_scores(a, a, (1, 1, 1), tolerance=2.0, halo=1.0)
    with pytest.raises(ConfigError, match="tolerance=-1"):
        volume_scores(a, a, (1, 1, 1), tolerance=-1)
    for spacing in ((1, 0, 1), (1, 1), (1, math.nan, 1), (1, 1, math.inf)):
        with pytest.raises(ConfigError, match=r"^spacing .* is invalid; expected 3 positive numbers"):
            volume_scores(a, a, spacing)
    # the limits themselves are allowed: tolerance 0 (surfaces that coincide), a halo equal to the tolerance
    assert volume_scores(a, a, (1, 1, 1), tolerance=0)[0].surface_dice == 1.0
    assert volume_scores(a, a, (1, 1, 1), tolerance=2.0, halo=2.0)[0].hd95 == 0.0
    assert volume_scores(a, np.full_like(a, 255), (1, 1, 1)) == [], "nothing labelled: no classes"
    with pytest.raises(InputError, match="label 300"):
        volume_scores(a, np.full((8, 8, 8), 300, dtype=np.int16), (1, 1, 1))
    for bad in (300, -5):  # the message names the bad label, not the first voxel's (0, nodata 255)
        wide = np.zeros((8, 8, 8), dtype=np.int16)
        wide[0, 0, :2] = (0, 255)
        wide[5, 5, 5] = bad
        for args, what in (((a, wide), "the truth"), ((wide, a), "the prediction")):
            with pytest.raises(InputError, match=rf"^{what} holds label {bad} in voxels \(0, 0, 0\)\.\.\(8, 8, 8\) "
                                                 r"\(z, y, x\); expected class labels 0\.\.254 \(255 = none\); remap"):
                volume_scores(*args, (1, 1, 1))
    with pytest.raises(InputError, match=r"^the truth holds float32 values; expected integer class labels"):
        volume_scores(a, a.astype(np.float32), (1, 1, 1))
    with pytest.raises(InputError, match=r"^the prediction holds float64 values; expected integer class labels"):
        volume_scores(a.astype(np.float64), a, (1, 1, 1))
    for halo in (0, -1.0, float("inf"), True, "50"):
        with pytest.raises(ConfigError, match=rf"^halo={re.escape(repr(halo))} mm; expected a positive number of "
                                              r"millimetres, e.g\. 50$"):
            volume_scores(a, a, (1, 1, 1), halo=halo)  # type: ignore[arg-type]
    for tolerance in (float("inf"), float("nan"), True, "2"):
        with pytest.raises(ConfigError, match=rf"^tolerance={re.escape(repr(tolerance))} mm; expected a finite number "
                                              r">= 0, e\.g\. 2\.0$"):
            volume_scores(a, a, (1, 1, 1), tolerance=tolerance)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"^label volumes are \(z, y, x\); got shape \(8, 8\)$"):
        volume_scores(a[0], a[0], (1, 1, 1))
    with pytest.raises(InputError, match=r"^reading voxels \(0, 0, 0\)\.\.\(8, 8, 8\) gave shapes \(8, 8, 8\) and "
                                         r"\(1, 1, 1\)$"):
        volume_scores(a, lambda box: np.zeros((1, 1, 1), np.uint8), (1, 1, 1))
    distances = DirectedDistances((1.0, 1.0, 1.0), halo=3.0)
    with pytest.raises(ConfigError, match=r"^tolerance 3\.5 mm exceeds the halo 3\.0 mm; raise the halo$"):
        distances.within(3.5)
    assert distances.within(3.0) == 0 and math.isnan(distances.percentile(95)[0]) and distances.percentile(95)[1]


# --------------------------------------------------------------------------- files, grids and the CLI


def save_nifti(path: Path, zyx: np.ndarray, zyx_affine: np.ndarray, slope: float | None = None,
               inter: float = 0.0) -> Path:
    """Write a (z, y, x) array as NIfTI (i, j, k) = (x, y, z); ``zyx_affine`` maps (z, y, x, 1) to RAS mm;
    ``slope``/``inter`` the header's scaling of the stored values (none by default)."""
    image = nib.Nifti1Image(np.ascontiguousarray(zyx.transpose(2, 1, 0)), zyx_affine[:, [2, 1, 0, 3]])
    if slope is not None:
        image.header.set_slope_inter(slope, inter)
    nib.save(image, str(path))
    return path


def oblique_affine(spacing: tuple[float, float, float], angle: float = 0.4) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
        [[1.0, 0.0, 0.0], [0.0, math.cos(0.3), -math.sin(0.3)], [0.0, math.sin(0.3), math.cos(0.3)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation[:, [2, 1, 0]] * np.asarray(spacing)  # columns for z, y, x
    affine[:3, 3] = [-80.0, 12.5, 33.0]
    return affine


def test_oblique_niftis_use_the_column_norms_as_spacing(tmp_path: Path) -> None:
    spacing = (2.5, 0.9, 0.7)
    pred, truth = blobs((18, 24, 28), 21), blobs((18, 24, 28), 22)
    affine = oblique_affine(spacing)
    p = save_nifti(tmp_path / "pred.nii.gz", pred, affine)
    t = save_nifti(tmp_path / "truth.nii", truth.astype(np.int16), affine)
    assert is_label_volume(p) and not is_label_volume(tmp_path / "missing.tif")
    report = evaluate_volume(p, t, tolerance=1.5, chunk=10)
    assert report.spacing == pytest.approx(spacing, rel=1e-6)
    assert report.voxel_ml == pytest.approx(math.prod(spacing) / 1000, rel=1e-6)
    assert report.rows == volume_scores(pred, truth, report.spacing, tolerance=1.5)
    check_against_monai(pred, truth, spacing, 1.5)
    sheared = affine.copy()
    sheared[0, 1] += 0.5
    with pytest.raises(InputError, match="not orthogonal"):
        evaluate_volume(save_nifti(tmp_path / "s1.nii", pred, sheared), save_nifti(tmp_path / "s2.nii", truth,
                                                                                     sheared))


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """A demo-unet-3d run on a synthetic CT NIfTI (4 mm, the model's grid) and its truth NIfTI."""
    root = tmp_path_factory.mktemp("volume_run")
    image, truth = synthesize_volume((40, 56, 56), seed=5)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-90.0, -120.0, -110.0]
    save_nifti(root / "ct.nii.gz", image, affine)
    truth_path = save_nifti(root / "truth.nii.gz", truth, affine)
    tile_infer(root / "ct.nii.gz", root / "out", TileInferParams(model="demo-unet-3d", device="cpu", amp=False))
    return root / "out", truth_path, truth, affine


def test_eval_command_on_a_volume_run(volume_run: tuple[Path, Path, np.ndarray, np.ndarray], tmp_path: Path
                                      ) -> None:
    out, truth_path, truth, _ = volume_run
    result = CliRunner().invoke(eval_cmd, ["--pred", str(out), "--truth", str(truth_path), "--tolerance", "4",
                                           "--json", str(tmp_path / "eval.json"), "--csv", str(tmp_path / "e.csv")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["class", "Dice", "HD95", "mm"] and "surface Dice@4mm" in lines[0]
    assert [ln.split()[0] for ln in lines[2:5]] == list(CLASSES)
    doc = json.loads((tmp_path / "eval.json").read_text())
    assert doc["kind"] == "volume" and doc["spacing_mm"] == [4.0, 4.0, 4.0] and doc["tolerance_mm"] == 4.0
    organ = doc["classes"][1]
    assert organ["class"] == "organ" and organ["dice"] > 0.9 and organ["hd95_state"] == "exact"
    assert 0 <= organ["hd95_mm"] <= 8.0 and organ["surface_dice"] > 0.9
    assert organ["truth_ml"] == pytest.approx(int((truth == 1).sum()) * 64 / 1000)
    header = (tmp_path / "e.csv").read_text().splitlines()[0]
    assert header == "class,dice,hd95_mm,hd95_state,surface_dice,truth_ml,pred_ml"
    # the same numbers from labels.nii.gz, and from arrays read independently with nibabel, and MONAI's
    pred = np.asarray(nib.load(str(out / "labels.nii.gz")).dataobj).transpose(2, 1, 0)
    report = evaluate_prediction(out / "labels.nii.gz", truth_path, tolerance=4.0)
    assert isinstance(report, VolumeEvalReport)
    assert report.rows == volume_scores(pred, truth, (4.0, 4.0, 4.0), tolerance=4.0)
    assert [r["dice"] for r in doc["classes"]] == pytest.approx([r.dice for r in report.rows], rel=1e-12)
    check_against_monai(pred, truth, (4.0, 4.0, 4.0), 4.0)


def test_mismatched_grids_are_refused_with_exit_2(volume_run: tuple[Path, Path, np.ndarray, np.ndarray],
                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _, truth, affine = volume_run
    moved = affine.copy()
    moved[:3, 3] += [0.0, 2.0, 0.0]
    cases = {"shifted.nii.gz": (truth, moved, "affines differ by up to 2"),
             "cropped.nii.gz": (truth[:-1], affine, "shape 40x56x56 vs 39x56x56")}
    for name, (labels, aff, needle) in cases.items():
        path = save_nifti(tmp_path / name, labels, aff)
        assert main(["eval", "--pred", str(out), "--truth", str(path)]) == 2
        captured = capsys.readouterr()
        assert needle in captured.err and "not on the same voxel grid" in captured.err
        assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    with pytest.raises(InputError, match="not a label volume"):
        evaluate_volume(out, out / "run.json")


def test_raster_predictions_refuse_volume_options(tmp_path: Path) -> None:
    import rasterio

    path = tmp_path / "p.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8") as ds:
        ds.write(np.zeros((1, 8, 8), dtype=np.uint8))
    with pytest.raises(ConfigError, match="applies to volume predictions"):
        evaluate_prediction(path, path, tolerance=2.0)
    assert evaluate_prediction(path, path).pixels == 64  # type: ignore[union-attr]
