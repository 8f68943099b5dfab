"""Tests for segflow.metrics: hand-computed confusion matrices, chunked accumulation, object F1."""

from __future__ import annotations

import itertools
import math
import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from segflow.errors import ConfigError, InputError
from segflow.metrics import ConfusionMatrix, ObjectScore, instances_from_mask, object_f1

# truth / pred of 6 pixels, 3 classes
TRUTH = np.array([[0, 0, 1], [1, 2, 2]])
PRED = np.array([[0, 1, 1], [1, 2, 0]])
# pairs (truth, pred): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0)
HAND_MATRIX = np.array(
    [
        [1, 1, 0],  # truth 0: once predicted 0, once 1
        [0, 2, 0],  # truth 1: twice predicted 1
        [1, 0, 1],  # truth 2: once predicted 0, once 2
    ]
)


def nan_equal(a: np.ndarray, b: list[float]) -> bool:
    return bool(np.allclose(a, b, equal_nan=True, rtol=0, atol=1e-12))


# --------------------------------------------------------------------------- confusion matrix


class TestConfusionMatrix:
    def test_hand_computed_matrix_and_scores(self) -> None:
        cm = ConfusionMatrix(3).update(PRED, TRUTH)
        assert cm.matrix.dtype == np.int64
        np.testing.assert_array_equal(cm.matrix, HAND_MATRIX)
        # class: tp, fp, fn -> 0: 1, 1, 1 | 1: 2, 1, 0 | 2: 1, 0, 1
        assert nan_equal(cm.iou(), [1 / 3, 2 / 3, 1 / 2])
        assert nan_equal(cm.dice(), [2 / 4, 4 / 5, 2 / 3])
        assert nan_equal(cm.precision(), [1 / 2, 2 / 3, 1 / 1])
        assert nan_equal(cm.recall(), [1 / 2, 2 / 2, 1 / 2])
        assert math.isclose(cm.mean_iou(), (1 / 3 + 2 / 3 + 1 / 2) / 3)
        assert math.isclose(cm.pixel_accuracy(), 4 / 6)
        assert cm.total == 6

    def test_table(self) -> None:
        rows = ConfusionMatrix(3).update(PRED, TRUTH).table(["road", "building", "water"])
        assert [r["class"] for r in rows] == ["road", "building", "water"]
        assert rows[1] == {
            "class": "building",
            "iou": pytest.approx(2 / 3),
            "dice": pytest.approx(0.8),
            "precision": pytest.approx(2 / 3),
            "recall": 1.0,
            "support": 2,
            "missed": 0,
            "ignored": False,
        }
        assert [r["class"] for r in ConfusionMatrix(2).table()] == ["0", "1"]

    def test_absent_class_is_nan_and_left_out_of_mean(self) -> None:
        # class 3 never appears; class 2 only predicted (IoU 0, counts in the mean)
        truth = np.array([0, 0, 1, 1])
        pred = np.array([0, 2, 1, 1])
        cm = ConfusionMatrix(4).update(pred, truth)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            iou = cm.iou()
            assert nan_equal(iou, [1 / 2, 1.0, 0.0, math.nan])
            assert math.isclose(cm.mean_iou(), (0.5 + 1.0 + 0.0) / 3)
            assert nan_equal(cm.precision(), [1.0, 1.0, 0.0, math.nan])
            assert nan_equal(cm.recall(), [1 / 2, 1.0, math.nan, math.nan])

    def test_empty_matrix_is_nan_without_warnings(self) -> None:
        cm = ConfusionMatrix(2).update(np.zeros((0, 3), np.int64), np.zeros((0, 3), np.int64))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert math.isnan(cm.mean_iou())
            assert math.isnan(cm.pixel_accuracy())
            assert np.isnan(cm.dice()).all()

    def test_only_ignored_truth_pixels_are_skipped(self) -> None:
        truth = np.array([0, 1, 255, 1], dtype=np.uint8)
        pred = np.array([0, 1, 1, 1], dtype=np.uint8)
        cm = ConfusionMatrix(2, ignore_index=255).update(pred, truth)
        np.testing.assert_array_equal(cm.matrix, [[1, 0], [0, 2]])
        with pytest.raises(InputError, match="pred contains label 255; expected values in \\[0, 2\\); fix the "
                                             "mask or set no_prediction"):
            ConfusionMatrix(2, ignore_index=255).update(np.array([0, 255]), np.array([0, 1]))

    def test_no_prediction_is_a_miss_of_the_true_class(self) -> None:
        truth = np.array([0, 1, 1, 1, 2, 255], dtype=np.uint8)
        pred = np.array([0, 255, 1, 255, 255, 255], dtype=np.uint8)
        cm = ConfusionMatrix(3, ignore_index=255, no_prediction=255).update(pred, truth)
        np.testing.assert_array_equal(cm.matrix, [[1, 0, 0], [0, 1, 0], [0, 0, 0]])
        np.testing.assert_array_equal(cm.missed, [0, 2, 1])
        assert (cm.covered, cm.total) == (2, 5) and cm.coverage() == pytest.approx(2 / 5)
        np.testing.assert_array_equal(cm.support(), [1, 3, 1])
        # class 1: tp 1, fp 0, fn 2 (missed); class 2: tp 0, fn 1
        assert nan_equal(cm.iou(), [1.0, 1 / 3, 0.0])
        assert nan_equal(cm.recall(), [1.0, 1 / 3, 0.0])
        assert nan_equal(cm.precision(), [1.0, 1.0, math.nan])
        assert cm.mean_iou() == pytest.approx((1 + 1 / 3 + 0) / 3)
        assert cm.pixel_accuracy() == pytest.approx(2 / 5)
        assert cm.table()[1]["missed"] == 2
        empty = ConfusionMatrix(3, ignore_index=255, no_prediction=255).update(np.array([255]), np.array([255]))
        assert empty.total == 0 and math.isnan(empty.coverage())

    def test_ignore_index_inside_range_drops_those_truth_pixels_and_the_class_from_the_means(self) -> None:
        cm = ConfusionMatrix(3, ignore_index=0).update(PRED, TRUTH)
        # truth 0 pixels are left out; pred 0 on the truth-2 pixel stays an error of class 2
        np.testing.assert_array_equal(cm.matrix, [[0, 0, 0], [0, 2, 0], [1, 0, 1]])
        assert nan_equal(cm.iou(), [math.nan, 1.0, 1 / 2])
        assert cm.mean_iou() == pytest.approx(0.75) and cm.mean_dice() == pytest.approx((1 + 2 / 3) / 2)
        assert cm.ignored_classes == (0,) and cm.table()[0]["ignored"] is True

    def test_the_reported_ignore_zero_case(self) -> None:
        """Issue 13: 36 foreground pixels, one predicted; ignoring truth 0 must not skip the 35 predicted 0."""
        truth = np.zeros(1000, np.uint8)
        truth[:36] = 1
        pred = np.zeros(1000, np.uint8)
        pred[0] = 1
        cm = ConfusionMatrix(2, ignore_index=0).update(pred, truth)
        assert cm.iou()[1] == pytest.approx(1 / 36)  # 0.028, was reported as 1.0
        assert cm.mean_iou() == pytest.approx(1 / 36), "the ignored background leaves the mean"

    def test_scores_equal_sklearn_on_the_kept_pixels(self) -> None:
        sklearn_metrics = pytest.importorskip("sklearn.metrics")
        rng = np.random.default_rng(3)
        truth = rng.choice([0, 1, 2, 3, 255], size=4000)
        pred = np.where(rng.random(4000) < 0.6, truth, rng.choice([0, 1, 2, 3, 255], size=4000))
        cm = ConfusionMatrix(4, ignore_index=[255, 0], no_prediction=255).update(pred, truth)
        keep = ~np.isin(truth, [255, 0])
        reference = sklearn_metrics.confusion_matrix(truth[keep], pred[keep], labels=[0, 1, 2, 3, 255])
        np.testing.assert_array_equal(cm.matrix, reference[:4, :4])
        np.testing.assert_array_equal(cm.missed, reference[:4, 4])
        for name in ("jaccard_score", "f1_score", "precision_score", "recall_score"):
            ours = {"jaccard_score": cm.iou, "f1_score": cm.dice, "precision_score": cm.precision,
                    "recall_score": cm.recall}[name]()
            theirs = getattr(sklearn_metrics, name)(truth[keep], pred[keep], labels=[1, 2, 3], average=None)
            np.testing.assert_allclose(ours[1:], theirs)
            assert math.isnan(ours[0])
        macro = sklearn_metrics.jaccard_score(truth[keep], pred[keep], labels=[1, 2, 3], average="macro")
        assert cm.mean_iou() == pytest.approx(macro)

    def test_dtypes_and_shapes(self) -> None:
        cm = ConfusionMatrix(2).update(np.array([[[True, False]]]), np.array([[[1, 1]]], dtype=np.uint64))
        np.testing.assert_array_equal(cm.matrix, [[0, 0], [1, 1]])
        volume = ConfusionMatrix(3).update(PRED.reshape(1, 2, 3), TRUTH.reshape(1, 2, 3))
        np.testing.assert_array_equal(volume.matrix, HAND_MATRIX)
        assert ConfusionMatrix(np.int64(3)).num_classes == 3  # type: ignore[arg-type]  # numpy ints are ints

    def test_merge_and_reset(self) -> None:
        a = ConfusionMatrix(3).update(PRED[0], TRUTH[0])
        b = ConfusionMatrix(3).update(PRED[1], TRUTH[1])
        assert a.merge(b) is a
        np.testing.assert_array_equal(a.matrix, HAND_MATRIX)
        np.testing.assert_array_equal(b.matrix.sum(), 3)  # b unchanged
        a.reset()
        assert a.total == 0

    def test_matrix_is_a_copy(self) -> None:
        cm = ConfusionMatrix(3).update(PRED, TRUTH)
        cm.matrix[0, 0] = 100
        np.testing.assert_array_equal(cm.matrix, HAND_MATRIX)

    @pytest.mark.parametrize(
        ("pred", "truth", "match"),
        [
            (np.array([0, 3]), np.array([0, 1]), "pred contains label 3"),
            (np.array([0, 1]), np.array([-1, 1]), "truth contains label -1"),
            (
                np.array([0, 254]),
                np.array([0, 1]),
                "pred contains label 254; expected values in \\[0, 3\\); fix the mask or set no_prediction",
            ),
            (
                np.array([0, 1]),
                np.array([0, 254]),
                "truth contains label 254; expected values in \\[0, 3\\) or ignore_index=255",
            ),
            (np.array([0.0, 1.0]), np.array([0, 1]), "dtype float64"),
            (np.array([0, 1, 2]), np.array([0, 1]), "shape"),
        ],
    )
    def test_bad_values_raise(self, pred: np.ndarray, truth: np.ndarray, match: str) -> None:
        cm = ConfusionMatrix(3, ignore_index=255)
        with pytest.raises(InputError, match=match):
            cm.update(pred, truth)
        assert cm.total == 0  # nothing half-counted

    def test_bad_config_raises(self) -> None:
        with pytest.raises(ConfigError, match="num_classes=0"):
            ConfusionMatrix(0)
        with pytest.raises(ConfigError, match="ignore_index"):
            ConfusionMatrix(2, ignore_index=1.5)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="ignore_index"):
            ConfusionMatrix(2, ignore_index=[255, True])
        with pytest.raises(ConfigError, match="no_prediction=1; expected an int outside the classes"):
            ConfusionMatrix(2, no_prediction=1)
        with pytest.raises(ConfigError, match="no_prediction=None"):
            ConfusionMatrix(2, ignore_index=255).merge(ConfusionMatrix(2, ignore_index=255, no_prediction=255))
        with pytest.raises(ConfigError, match="num_classes=3"):
            ConfusionMatrix(2).merge(ConfusionMatrix(3))
        with pytest.raises(ConfigError, match="class_names"):
            ConfusionMatrix(2).table(["only one"])

    def test_bool_masks_are_classes_0_and_1(self) -> None:
        truth = np.array([[True, True], [False, True]])
        pred = np.array([[1, 255], [0, 0]], dtype=np.uint8)
        cm = ConfusionMatrix(2, no_prediction=255).update(pred, truth)
        np.testing.assert_array_equal(cm.matrix, [[1, 0], [1, 1]])
        np.testing.assert_array_equal(cm.missed, [0, 1])
        cm.update(np.array([True, False]), np.array([True, True]))
        np.testing.assert_array_equal(cm.matrix, [[1, 0], [2, 2]])

    def test_counts_are_int64(self) -> None:
        # int64 counts stay exact past 2**53 pixels, where float64 counts would round
        cm = ConfusionMatrix(3, ignore_index=255, no_prediction=255)
        cm.update(np.array([0, 255, 2], np.uint8), np.array([0, 1, 2], np.uint8))
        assert cm.matrix.dtype == np.int64 and cm.missed.dtype == np.int64 and cm.support().dtype == np.int64
        np.testing.assert_array_equal(cm.support(), [1, 1, 1])

    @pytest.mark.parametrize(("num_classes", "no_prediction"),
                             [(2, 2), (2, 255), (2, -1), (1, 1), (2, np.uint8(255)), (2, np.int64(7))])
    def test_no_prediction_outside_the_classes_is_accepted(self, num_classes: int, no_prediction: int) -> None:
        """A raster's nodata read as a numpy integer is accepted like a Python int."""
        cm = ConfusionMatrix(num_classes, no_prediction=no_prediction)
        assert type(cm.no_prediction) is int and cm.no_prediction == int(no_prediction)
        cm.update(np.array([0, no_prediction]), np.array([0, 0]))
        np.testing.assert_array_equal(cm.missed, [1] + [0] * (num_classes - 1))
        assert cm.coverage() == 0.5

    @pytest.mark.parametrize(
        ("num_classes", "no_prediction"), [(2, 0), (2, 1), (3, 0), (1, 0), (1, True), (2, 255.0), (2, "255")]
    )
    def test_no_prediction_that_is_a_class_or_not_an_int_is_refused(
        self, num_classes: int, no_prediction: object
    ) -> None:
        message = (f"no_prediction={no_prediction!r}; expected an int outside the classes [0, {num_classes}), "
                   "e.g. 255, or None")
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            ConfusionMatrix(num_classes, no_prediction=no_prediction)  # type: ignore[arg-type]

    @pytest.mark.parametrize("num_classes", [0, -1, True, False, 2.0, "3"])
    def test_num_classes_must_be_a_positive_int(self, num_classes: object) -> None:
        with pytest.raises(ConfigError, match=f"^{re.escape(f'num_classes={num_classes!r}; expected an int >= 1')}$"):
            ConfusionMatrix(num_classes)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("kwargs", "pred", "truth", "message"),
        [
            ({}, np.array([0.0, 1.0]), np.array([0, 1]), "pred has dtype float64; expected integer labels; cast with "
             ".astype(np.int64) (round probabilities/logits to classes first)"),
            ({}, np.array([0, 1]), np.array([0, 1], np.float32), "truth has dtype float32; expected integer labels; "
             "cast with .astype(np.int64) (round probabilities/logits to classes first)"),
            ({}, np.array([0, 1]), np.array([0, 5]),
             "truth contains label 5; expected values in [0, 3); fix the mask or set ignore_index"),
            ({"ignore_index": [255, 0]}, np.array([0, 1]), np.array([0, 7]),
             "truth contains label 7; expected values in [0, 3) or ignore_index=[255, 0]; fix the mask or set "
             "ignore_index"),
            ({}, np.array([0, -2]), np.array([0, 1]),
             "pred contains label -2; expected values in [0, 3); fix the mask or set no_prediction (e.g. 255)"),
            ({"no_prediction": 255}, np.array([0, 7]), np.array([0, 1]),
             "pred contains label 7; expected values in [0, 3) or no_prediction=255; fix the mask"),
            ({}, np.zeros((2, 3), np.int64), np.zeros((3, 2), np.int64),
             "pred has shape (2, 3) but truth has shape (3, 2); expected equal shapes"),
        ],
    )
    def test_input_error_messages_in_full(
        self, kwargs: dict, pred: np.ndarray, truth: np.ndarray, message: str
    ) -> None:
        cm = ConfusionMatrix(3, **kwargs)
        with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
            cm.update(pred, truth)
        assert cm.total == 0

    def test_config_error_messages_in_full(self) -> None:
        with pytest.raises(ConfigError, match=f"^{re.escape('cannot merge a dict; expected a ConfusionMatrix')}$"):
            ConfusionMatrix(2).merge({"matrix": [[1, 0], [0, 1]]})  # type: ignore[arg-type]
        message = ("cannot merge num_classes=3, ignore_index=[0, 255], no_prediction=None into one with "
                   "num_classes=2, ignore_index=255, no_prediction=255; build both with the same settings")
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            ConfusionMatrix(2, 255, no_prediction=255).merge(ConfusionMatrix(3, [0, 255]))
        message = "class_names=['only one'] has 1 entries; expected 2, one per class"
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            ConfusionMatrix(2).table(["only one"])

    def test_merge_needs_the_same_ignored_values_in_any_order(self) -> None:
        a = ConfusionMatrix(3, ignore_index=[255, 0]).update(PRED, TRUTH)
        a.merge(ConfusionMatrix(3, ignore_index=(0, 255, 0)).update(PRED, TRUTH))
        np.testing.assert_array_equal(a.matrix, 2 * np.array([[0, 0, 0], [0, 2, 0], [1, 0, 1]]))
        with pytest.raises(ConfigError, match="ignore_index=0"):
            a.merge(ConfusionMatrix(3, ignore_index=0))


@st.composite
def label_pairs(draw: st.DrawFn) -> tuple[int, np.ndarray, np.ndarray, list[int]]:
    k = draw(st.integers(1, 5))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=12))
    values = st.sampled_from([*range(k), 255])  # 255 = ignore_index
    truth = draw(hnp.arrays(np.int16, shape, elements=values))
    pred = draw(hnp.arrays(np.int16, shape, elements=values))
    cuts = sorted(draw(st.lists(st.integers(0, shape[0]), max_size=4)))
    return k, pred, truth, cuts


def reference_matrix(k: int, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pixel loop: truth 255 left out; pred 255 (no prediction) in an extra last column."""
    out = np.zeros((k, k + 1), dtype=np.int64)
    for p, t in zip(pred.ravel().tolist(), truth.ravel().tolist(), strict=True):
        if t != 255:
            out[t, k if p == 255 else p] += 1
    return out


@settings(max_examples=150, deadline=None)
@given(label_pairs())
def test_chunked_accumulation_equals_whole(case: tuple[int, np.ndarray, np.ndarray, list[int]]) -> None:
    k, pred, truth, cuts = case
    whole = ConfusionMatrix(k, ignore_index=255, no_prediction=255).update(pred, truth)
    reference = reference_matrix(k, pred, truth)
    np.testing.assert_array_equal(whole.matrix, reference[:, :k])
    np.testing.assert_array_equal(whole.missed, reference[:, k])
    bounds = [0, *cuts, pred.shape[0]]
    chunked = ConfusionMatrix(k, ignore_index=255, no_prediction=255)
    merged = ConfusionMatrix(k, ignore_index=255, no_prediction=255)
    for lo, hi in itertools.pairwise(bounds):
        chunked.update(pred[lo:hi], truth[lo:hi])
        merged.merge(ConfusionMatrix(k, ignore_index=255, no_prediction=255).update(pred[lo:hi], truth[lo:hi]))
    np.testing.assert_array_equal(chunked.matrix, whole.matrix)
    np.testing.assert_array_equal(merged.matrix, whole.matrix)
    np.testing.assert_array_equal(merged.missed, whole.missed)
    np.testing.assert_array_equal(chunked.iou(), whole.iou())


# --------------------------------------------------------------------------- object F1


def square(labels: np.ndarray, ident: int, r0: int, c0: int, size: int = 10) -> None:
    labels[r0 : r0 + size, c0 : c0 + size] = ident


def reference_object_f1(pred: np.ndarray, truth: np.ndarray, thr: float) -> tuple[int, int, int]:
    """Per-object loops: IoU of every pair, greedy one-to-one by descending IoU."""
    pids = [i for i in np.unique(pred) if i]
    tids = [i for i in np.unique(truth) if i]
    pairs = []
    for p in pids:
        for t in tids:
            inter = np.sum((pred == p) & (truth == t))
            iou = inter / np.sum((pred == p) | (truth == t))
            if inter and iou >= thr:
                pairs.append((-iou, p, t))
    used_p: set[int] = set()
    used_t: set[int] = set()
    for _, p, t in sorted(pairs):
        if p not in used_p and t not in used_t:
            used_p.add(p)
            used_t.add(t)
    tp = len(used_p)
    return tp, len(pids) - tp, len(tids) - tp


class TestObjectF1:
    def test_exact_match_with_different_ids(self) -> None:
        truth = np.zeros((40, 40), np.int32)
        square(truth, 1, 0, 0)
        square(truth, 2, 20, 20)
        square(truth, 3, 0, 25)
        pred = np.zeros_like(truth)
        pred[truth == 1], pred[truth == 2], pred[truth == 3] = 70, 5, 1_000_000_000
        score = object_f1(pred, truth)
        assert score == ObjectScore(tp=3, fp=0, fn=0, precision=1.0, recall=1.0, f1=1.0)

    def test_one_missed(self) -> None:
        truth = np.zeros((40, 40), np.int32)
        square(truth, 1, 0, 0)
        square(truth, 2, 20, 20)
        pred = np.where(truth == 1, 1, 0)
        score = object_f1(pred, truth)
        assert (score.tp, score.fp, score.fn) == (1, 0, 1)
        assert (score.precision, score.recall, score.f1) == (1.0, 0.5, pytest.approx(2 / 3))

    def test_split_object_matches_once(self) -> None:
        truth = np.zeros((20, 20), np.int32)
        square(truth, 1, 0, 0)  # 100 px
        pred = np.zeros_like(truth)
        pred[0:10, 0:6] = 1  # 60 px -> IoU 0.6, matched
        pred[0:10, 6:10] = 2  # 40 px -> IoU 0.4, false positive
        score = object_f1(pred, truth)
        assert (score.tp, score.fp, score.fn) == (1, 1, 0)
        assert score.precision == 0.5 and score.recall == 1.0

    def test_even_split_is_one_to_one(self) -> None:
        truth = np.zeros((20, 20), np.int32)
        square(truth, 1, 0, 0)
        pred = np.zeros_like(truth)
        pred[0:10, 0:5], pred[0:10, 5:10] = 1, 2  # both halves have IoU exactly 0.5
        score = object_f1(pred, truth)
        assert (score.tp, score.fp, score.fn) == (1, 1, 0)

    @pytest.mark.parametrize(("pixels", "matched"), [(49, False), (50, True), (51, True)])
    def test_iou_around_threshold(self, pixels: int, matched: bool) -> None:
        # prediction = the first `pixels` pixels of a 100-pixel truth square: IoU = pixels / 100
        truth = np.zeros((12, 12), np.int32)
        square(truth, 1, 1, 1)
        flat = np.zeros(100, np.int32)
        flat[:pixels] = 1
        pred = np.zeros_like(truth)
        pred[1:11, 1:11] = flat.reshape(10, 10)
        score = object_f1(pred, truth, iou_threshold=0.5)
        assert (score.tp, score.fp, score.fn) == ((1, 0, 0) if matched else (0, 1, 1))

    def test_greedy_prefers_highest_iou_at_low_threshold(self) -> None:
        truth = np.zeros((10, 30), np.int32)
        truth[0:10, 0:10] = 1
        truth[0:10, 12:22] = 2
        pred = np.zeros_like(truth)
        pred[0:10, 4:16] = 1  # IoU with truth 1: 60/140, with truth 2: 40/160
        score = object_f1(pred, truth, iou_threshold=0.2)
        assert (score.tp, score.fp, score.fn) == (1, 0, 1)

    def test_greedy_takes_the_highest_iou_first_even_if_fewer_pairs_match(self) -> None:
        truth = np.zeros((1, 30), np.int32)
        truth[0, 0:10] = 1
        truth[0, 10:20] = 2
        pred = np.zeros_like(truth)
        pred[0, 2:15] = 1  # IoU with truth 1: 8/15, with truth 2: 5/18
        pred[0, 0:2] = 2  # IoU with truth 1: 2/10
        score = object_f1(pred, truth, iou_threshold=0.15)
        assert (score.tp, score.fp, score.fn) == (1, 1, 1), "pred 1 takes truth 1; lower pairs do not reshuffle"
        assert (score.tp, score.fp, score.fn) == reference_object_f1(pred, truth, 0.15)

    def test_ids_too_large_for_a_lookup_table_are_numbered_by_sorting(self) -> None:
        truth = np.zeros((4, 6), np.int64)
        truth[:2, :3] = 5_000_000_000
        truth[2:, 3:] = 7
        for background in (True, False):
            pred = np.where(truth > 0, truth + 10**12, 0)
            if not background:  # every pixel an object: no id 0 to leave out
                pred = np.where(pred == 0, 3 * 10**12, pred)
            score = object_f1(pred, truth)
            assert (score.tp, score.fp, score.fn) == ((2, 0, 0) if background else (2, 1, 0)), background
            assert (score.tp, score.fp, score.fn) == reference_object_f1(pred, truth, 0.5)

    def test_threshold_one_and_refusals_in_full(self) -> None:
        same = np.array([[0, 1, 1], [2, 0, 0]])
        assert object_f1(same, same * 5, iou_threshold=1.0).tp == 2
        for bad in ("0.5", None, True):
            with pytest.raises(ConfigError, match=rf"^iou_threshold={bad!r}; expected a number in \(0, 1\], "
                                                  r"e\.g\. 0\.5$"):
                object_f1(same, same, iou_threshold=bad)  # type: ignore[arg-type]
        for name, args in (("pred_instances", (-same, same)), ("truth_instances", (same, -same))):
            with pytest.raises(InputError, match=rf"^{name} contains id -2; expected instance ids >= 0 "
                                                 r"\(0 = background\)$"):
                object_f1(*args)
        with pytest.raises(InputError, match=r"^truth_instances has dtype float64; expected integer labels"):
            object_f1(same, same.astype(float))

    def test_maps_without_pixels(self) -> None:
        score = object_f1(np.zeros((0, 4), np.int32), np.zeros((0, 4), np.int32))
        assert (score.tp, score.fp, score.fn) == (0, 0, 0)

    def test_empty_maps(self) -> None:
        empty = np.zeros((5, 5), np.int32)
        score = object_f1(empty, empty)
        assert (score.tp, score.fp, score.fn) == (0, 0, 0)
        assert math.isnan(score.precision) and math.isnan(score.recall) and math.isnan(score.f1)
        one = empty.copy()
        one[1, 1] = 3
        missed = object_f1(empty, one)
        assert missed.recall == 0.0 and missed.f1 == 0.0 and math.isnan(missed.precision)

    @pytest.mark.parametrize("seed", range(4))
    def test_matches_reference_on_random_maps(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        truth = instances_from_mask(rng.random((40, 40)) > 0.55, 1)
        pred = instances_from_mask(rng.random((40, 40)) > 0.55, 1, connectivity=2)
        pred = np.where(pred > 0, pred * 7 + 3, 0)  # non-consecutive ids
        for thr in (0.1, 0.5, 0.9):
            score = object_f1(pred, truth, iou_threshold=thr)
            assert (score.tp, score.fp, score.fn) == reference_object_f1(pred, truth, thr)

    def test_many_small_objects_use_the_sparse_path(self) -> None:
        # 400 single-pixel objects on each side: the dense pair table (401 x 401) would be larger
        # than the overlaps warrant, so pairs are counted by sorting; result must not change.
        truth = np.arange(1, 401, dtype=np.int64).reshape(20, 20)
        pred = truth[::-1].copy()
        pred[:10] = truth[:10]  # rows 0..9 identical, rows 10..19 a different id per pixel
        score = object_f1(pred, truth)
        assert (score.tp, score.fp, score.fn) == reference_object_f1(pred, truth, 0.5)
        assert score.tp >= 200

    def test_scores_add_up_over_tiles(self) -> None:
        total = ObjectScore.from_counts(1, 0, 1) + ObjectScore.from_counts(2, 1, 0)
        assert total == ObjectScore.from_counts(3, 1, 1)
        assert ObjectScore.from_counts(4, 2, 3) + ObjectScore.from_counts(1, 5, 2) == ObjectScore.from_counts(5, 7, 5)
        assert total.f1 == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))

    @pytest.mark.parametrize(
        ("pred", "truth", "kwargs", "error", "match"),
        [
            (
                np.zeros((3, 3), np.int32),
                np.zeros((3, 3), np.int32),
                {"iou_threshold": 0.0},
                ConfigError,
                "0.0",
            ),
            (
                np.zeros((3, 3), np.int32),
                np.zeros((3, 3), np.int32),
                {"iou_threshold": 1.5},
                ConfigError,
                "1.5",
            ),
            (np.zeros((3, 3), np.int32), np.zeros((3, 4), np.int32), {}, InputError, "shape"),
            (-np.ones((3, 3), np.int32), np.zeros((3, 3), np.int32), {}, InputError, "contains id -1"),
            (np.zeros((3, 3), np.float32), np.zeros((3, 3), np.int32), {}, InputError, "dtype float32"),
        ],
    )
    def test_bad_inputs(
        self, pred: np.ndarray, truth: np.ndarray, kwargs: dict, error: type[Exception], match: str
    ) -> None:
        with pytest.raises(error, match=match):
            object_f1(pred, truth, **kwargs)


class TestInstancesFromMask:
    def test_connectivity(self) -> None:
        mask = np.array([[2, 0, 0], [0, 2, 0], [1, 0, 2]])
        four = instances_from_mask(mask, 2, connectivity=1)
        eight = instances_from_mask(mask, 2, connectivity=2)
        assert four.max() == 3 and eight.max() == 1
        np.testing.assert_array_equal(instances_from_mask(mask, 2), four)  # faces only by default, as scipy
        assert four.dtype == np.int32
        np.testing.assert_array_equal(eight > 0, mask == 2)

    def test_3d(self) -> None:
        mask = np.zeros((3, 3, 3), np.uint8)
        mask[0, 0, 0] = mask[1, 1, 1] = 5
        assert instances_from_mask(mask, 5, connectivity=1).max() == 2
        assert instances_from_mask(mask, 5, connectivity=3).max() == 1

    def test_bad_connectivity(self) -> None:
        with pytest.raises(ConfigError, match=r"connectivity=3; expected an int in \[1, 2\]"):
            instances_from_mask(np.zeros((3, 3), np.int32), 1, connectivity=3)
        with pytest.raises(ConfigError, match=r"^connectivity=2\.0; expected an int in \[1, 2\] for a 2D mask$"):
            instances_from_mask(np.zeros((3, 3), np.int32), 1, connectivity=2.0)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match=r"^connectivity=True; expected an int in \[1, 1\] for a 1D mask$"):
            instances_from_mask(np.zeros(3, np.int32), 1, connectivity=True)

    def test_a_line_of_pixels_and_bad_masks(self) -> None:
        np.testing.assert_array_equal(instances_from_mask(np.array([1, 1, 0, 1]), 1), [1, 1, 0, 2])
        with pytest.raises(InputError, match=r"^mask is a scalar; expected an array with at least one axis$"):
            instances_from_mask(np.int32(3), 3)
        with pytest.raises(InputError, match=r"^mask has dtype float64; expected integer labels; cast with "
                                             r"\.astype\(np\.int64\) \(round probabilities/logits to classes first\)$"):
            instances_from_mask(np.zeros((2, 2)), 1)
