"""Instance metrics (segflow.instance_metrics) against pycocotools and hand-computed cases."""

from __future__ import annotations

import re

import numpy as np
import pytest

from segflow.errors import InputError
from segflow.instance_metrics import MaskAP, as_instances, mask_ap, match_instances


def _rect(shape: tuple[int, int], y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# ----------------------------------------------------------------------------- hand-computed


def test_match_greedy_by_score_hand_case() -> None:
    shape = (20, 20)
    truth = [_rect(shape, 0, 0, 10, 10), _rect(shape, 0, 10, 10, 20)]
    # p0 covers truth 0 exactly (IoU 1), p1 overlaps truth 0 by 50/100 + ... (IoU 50/150 < 0.5), p2 is elsewhere
    preds = [_rect(shape, 0, 0, 10, 10), _rect(shape, 0, 5, 10, 15), _rect(shape, 12, 0, 20, 8)]
    m = match_instances(preds, [0.9, 0.8, 0.7], truth)
    assert m.matched.tolist() == [0, -1, -1]
    assert (m.tp, m.fp, m.fn) == (1, 2, 1)
    assert m.score.precision == pytest.approx(1 / 3)
    assert m.score.recall == pytest.approx(1 / 2)
    assert m.score.f1 == pytest.approx(2 / (2 + 2 + 1))


def test_match_lower_score_loses_the_truth() -> None:
    shape = (10, 10)
    truth = [_rect(shape, 0, 0, 10, 10)]
    exact = _rect(shape, 0, 0, 10, 10)
    good = _rect(shape, 0, 0, 10, 8)  # IoU 0.8
    # the higher-scored prediction takes the truth object even though the other is better
    m = match_instances([exact, good], [0.2, 0.9], truth)
    assert m.matched.tolist() == [-1, 0]
    # at IoU 0.9 the 0.8 one cannot match, so the exact one does
    assert match_instances([exact, good], [0.2, 0.9], truth, iou=0.9).matched.tolist() == [0, -1]


def test_label_map_and_masks_agree() -> None:
    ids = np.zeros((12, 12), dtype=np.int64)
    ids[1:4, 1:6] = 7
    ids[6:11, 2:5] = 3
    ids[6:9, 7:12] = 1000
    inst = as_instances(ids)
    # objects in increasing id order: 3, 7, 1000
    assert inst.boxes.tolist() == [[6, 2, 11, 5], [1, 1, 4, 6], [6, 7, 9, 12]]
    assert inst.areas.tolist() == [15, 15, 15]
    masks = np.stack([ids == 3, ids == 7, ids == 1000])
    m1 = match_instances(ids, [0.1, 0.2, 0.3], masks)
    assert m1.matched.tolist() == [0, 1, 2]


def test_ap_hand_case() -> None:
    """Two truth objects, three predictions: ranked TP, FP, TP at every IoU threshold.

    Precision at recalls 0.5 and 1.0 is 1 and 2/3; made non-increasing: 1 up to recall 0.5, 2/3 after.
    101 recall points: 51 at precision 1 (0..0.5), 50 at 2/3 -> (51 + 100/3) / 101.
    """
    shape = (20, 20)
    truth = [_rect(shape, 0, 0, 10, 10), _rect(shape, 10, 10, 20, 20)]
    preds = [truth[0], _rect(shape, 0, 12, 5, 18), truth[1]]
    value = mask_ap([(preds, [0.9, 0.8, 0.7], truth)])
    assert value == pytest.approx((51 + 100 / 3) / 101)
    # nothing to find: NaN; nothing found: 0
    assert np.isnan(mask_ap([(preds, [0.9, 0.8, 0.7], [])]))
    assert mask_ap([([], [], truth)]) == 0.0


# ----------------------------------------------------------------------------- against pycocotools


def _random_image(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[list[np.ndarray], np.ndarray,
                                                                             list[np.ndarray]]:
    """Random truth rectangles/blobs and predictions that jitter them, plus strays and duplicates."""
    h, w = shape
    truth = []
    for _ in range(int(rng.integers(0, 9))):
        y0, x0 = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        m = _rect(shape, y0, x0, y0 + int(rng.integers(3, 14)), x0 + int(rng.integers(3, 14)))
        if rng.random() < 0.3:  # a notch, so not every object is a box
            m[y0, x0] = False
        truth.append(m)
    preds = []
    for t in truth:
        for _ in range(int(rng.integers(0, 3))):  # misses, hits and duplicates
            dy, dx = rng.integers(-3, 4, size=2)
            preds.append(np.roll(t, (int(dy), int(dx)), axis=(0, 1)))
    for _ in range(int(rng.integers(0, 4))):
        y0, x0 = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        preds.append(_rect(shape, y0, x0, y0 + int(rng.integers(2, 10)), x0 + int(rng.integers(2, 10))))
    preds = [p for p in preds if p.any()]
    scores = rng.random(len(preds))
    return preds, scores, [t for t in truth if t.any()]


def _coco_ap(images: list[tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]], shape: tuple[int, int],
             iou_type: str = "segm") -> np.ndarray:
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(m: np.ndarray) -> dict[str, object]:
        r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        r["counts"] = r["counts"].decode("ascii")
        return r

    gt = COCO()
    anns, dets, aid = [], [], 1
    for i, (preds, scores, truth) in enumerate(images):
        for t in truth:
            ys, xs = np.nonzero(t)
            anns.append({"id": aid, "image_id": i, "category_id": 1, "segmentation": rle(t), "area": float(t.sum()),
                         "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)],
                         "iscrowd": 0})
            aid += 1
        for p, s in zip(preds, scores, strict=True):
            dets.append({"image_id": i, "category_id": 1, "segmentation": rle(p), "score": float(s)})
    gt.dataset = {"images": [{"id": i, "height": shape[0], "width": shape[1]} for i in range(len(images))],
                  "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    gt.createIndex()
    dt = gt.loadRes(dets) if dets else COCO()
    ev = COCOeval(gt, dt, iou_type)
    ev.params.areaRng = [[0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    ev.params.maxDets = [100]
    ev.evaluate()
    ev.accumulate()
    precision = ev.eval["precision"][:, :, 0, 0, 0]  # (T, R)
    return precision.mean(axis=1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mask_ap_equals_pycocotools(seed: int) -> None:
    pytest.importorskip("pycocotools")
    rng = np.random.default_rng(seed)
    shape = (48, 64)
    images = [_random_image(rng, shape) for _ in range(6)]
    reference = _coco_ap(images, shape)
    ap = MaskAP()
    for preds, scores, truth in images:
        ap.add(preds, scores, truth)
    assert ap.num_truth == sum(len(t) for _, _, t in images) > 0
    np.testing.assert_allclose(ap.per_threshold(), reference, rtol=0, atol=1e-12)
    assert ap.value() == pytest.approx(float(reference.mean()), abs=1e-12)


def test_match_f1_equals_pycocotools_matches() -> None:
    """TP count at IoU 0.5 over all detections equals pycocotools' matched detections (maxDets large)."""
    pytest.importorskip("pycocotools")
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(7)
    shape = (40, 40)
    for _ in range(5):
        preds, scores, truth = _random_image(rng, shape)
        if not preds or not truth:
            continue
        m = match_instances(preds, scores, truth)
        # pycocotools' greedy matcher on its own IoU matrix, re-run here by hand on its IoUs
        encode = [mask_utils.encode(np.asfortranarray(x.astype(np.uint8))) for x in (*preds, *truth)]
        ious = mask_utils.iou(encode[: len(preds)], encode[len(preds):], [0] * len(truth))
        taken, tp = set(), 0
        for d in np.argsort(-scores, kind="mergesort"):
            best, g = 0.5, -1
            for j in range(len(truth)):
                if j in taken or ious[d, j] < best:
                    continue
                best, g = ious[d, j], j
            if g >= 0:
                taken.add(g)
                tp += 1
                assert m.matched[d] == g
        assert m.tp == tp and m.fn == len(truth) - tp and m.fp == len(preds) - tp


def test_many_objects_stay_cheap() -> None:
    """3000 small objects on a 1200x1200 map: only overlapping boxes are compared."""
    ids = np.zeros((1200, 1200), dtype=np.int64)
    k = 0
    for y in range(0, 1200, 22):
        for x in range(0, 1200, 22):
            k += 1
            ids[y:y + 20, x:x + 20] = k
    shifted = np.roll(ids, 1, axis=1)  # IoU 19*20 / (21*20) with each truth object
    m = match_instances(shifted, np.linspace(1, 0, k), ids)
    assert m.tp == k and m.fp == 0


# ----------------------------------------------------------------------------- edge cases and refusals


def test_refusals_say_what_was_wrong() -> None:
    with pytest.raises(InputError, match=r"^got 2 scores for 1 predicted objects; give one score per object$"):
        match_instances([np.ones((4, 4), bool)], [0.5, 0.4], [np.ones((4, 4), bool)])
    with pytest.raises(InputError, match=r"^instance label map holds id -1; expected ids >= 0 \(0 = no object\)$"):
        as_instances(np.array([[0, 2], [-1, 0]]))
    with pytest.raises(InputError, match=r"^instance masks must be 2D and of one shape, got \(4, 5\) after \(4, 4\); "
                                         r"pass \(Y, X\) masks of one image$"):
        as_instances([np.ones((4, 4), bool), np.ones((4, 5), bool)])
    with pytest.raises(InputError, match=r"^instance masks must be 2D and of one shape, got \(4,\) after None"):
        as_instances([np.ones(4, bool)])
    with pytest.raises(InputError, match=r"^a label map must hold integer instance ids, got dtype float64; pass ids "
                                         r"or a list of boolean masks$"):
        as_instances(np.zeros((3, 3)))
    for shape in ((5,), (1, 2, 3, 4)):
        with pytest.raises(InputError, match=rf"^objects must be a \(Y, X\) label map or \(N, Y, X\) masks, got shape "
                                             rf"{re.escape(str(shape))}$"):
            as_instances(np.zeros(shape, bool))
    for iou in (0.0, -0.1, 1.01, float("nan")):
        with pytest.raises(InputError, match=rf"^iou must be in \(0, 1\], got {iou}$"):
            match_instances([], [], [], iou=iou)


def test_objects_of_every_form() -> None:
    ids = np.zeros((6, 7), np.uint8)
    ids[1:3, 2:5] = 4
    ids[4, 0] = 9
    inst = as_instances(ids)
    assert as_instances(inst) is inst
    assert inst.boxes.dtype == np.int64 and inst.boxes.tolist() == [[1, 2, 3, 5], [4, 0, 5, 1]]
    assert inst.areas.dtype == np.int64 and inst.areas.tolist() == [6, 1] and len(inst) == 2
    assert [c.tolist() for c in inst.crops] == [[[True] * 3] * 2, [[True]]]
    stacked = as_instances(np.stack([ids == 4, ids == 9, np.zeros_like(ids, bool)]))  # an empty mask is kept
    assert stacked.boxes.tolist() == [[1, 2, 3, 5], [4, 0, 5, 1], [0, 0, 0, 0]] and stacked.areas.tolist() == [6, 1, 0]
    assert stacked.crops[2].shape == (0, 0) and stacked.crops[2].dtype == bool
    assert as_instances(ids == 4).areas.tolist() == [6]  # a bool map is one object
    assert len(as_instances(np.zeros((3, 3), np.int32))) == 0 and as_instances([]).boxes.shape == (0, 4)
    empty_map = as_instances(np.zeros((0, 0), np.int64))
    assert len(empty_map) == 0
    # a label map without 0 (every pixel an object)
    assert as_instances(np.array([[5, 5], [6, 6]])).areas.tolist() == [2, 2]


def test_an_empty_prediction_matches_nothing_and_counts_as_a_false_positive() -> None:
    truth = [_rect((8, 8), 0, 0, 4, 4)]
    m = match_instances([np.zeros((8, 8), bool), truth[0]], [0.9, 0.1], truth)
    assert m.matched.tolist() == [-1, 0] and (m.tp, m.fp, m.fn) == (1, 1, 0)


def test_an_exact_match_holds_at_an_iou_of_one() -> None:
    truth = [_rect((9, 9), 1, 1, 4, 8)]
    assert match_instances(truth, [1.0], truth, iou=1.0).matched.tolist() == [0]
    assert match_instances([_rect((9, 9), 1, 1, 4, 7)], [1.0], truth, iou=1.0).matched.tolist() == [-1]


def test_of_equal_ious_the_later_truth_object_wins_and_a_threshold_is_inclusive() -> None:
    pred = [_rect((4, 8), 0, 2, 4, 6)]  # half of each truth half: IoU 8 / 24 with each
    truth = [_rect((4, 8), 0, 0, 4, 4), _rect((4, 8), 0, 4, 4, 8)]
    assert match_instances(pred, [1.0], truth, iou=1 / 3).matched.tolist() == [1]
    assert match_instances(pred, [1.0], truth, iou=0.34).matched.tolist() == [-1]


def test_ious_in_blocks_equal_ious_at_once() -> None:
    from segflow.instance_metrics import _ious

    rng = np.random.default_rng(1)
    ids = np.zeros((40, 40), np.int64)
    for k in range(1, 30):
        y, x = rng.integers(0, 36, 2)
        ids[y:y + rng.integers(2, 6), x:x + rng.integers(2, 6)] = k
    pred, truth = as_instances(ids), as_instances(np.roll(ids, 1, axis=1))
    whole = _ious(pred, truth)
    for block in (1, 3, 7):
        for a, b in zip(_ious(pred, truth, block=block), whole, strict=True):
            np.testing.assert_array_equal(a, b)
    assert whole[0].dtype == whole[1].dtype == np.int64 and whole[2].dtype == np.float64
    assert len(whole[0]) > 10 and np.all(np.diff(whole[0]) >= 0)


def test_ap_keeps_the_100_best_predictions_of_each_image() -> None:
    """101 exact predictions of 101 objects: COCO keeps 100 per image, so recall stops at 100/101."""
    ids = np.arange(1, 102).reshape(1, 101).repeat(2, axis=0)  # 101 objects of 2 pixels
    scores = np.linspace(1.0, 0.5, 101)
    assert mask_ap([(ids, scores, ids)]) == pytest.approx(100 / 101)  # precision 1 up to recall 100/101: 100 points
    assert mask_ap([(ids, scores, ids)], max_detections=101) == pytest.approx(1.0)
    assert MaskAP().max_detections == 100


def test_ap_of_nothing_added_is_nan_and_scores_may_be_a_column() -> None:
    assert np.isnan(MaskAP().value())
    assert np.isnan(MaskAP().per_threshold()).all() and MaskAP().per_threshold().shape == (10,)
    truth = [_rect((20, 20), 0, 0, 10, 10), _rect((20, 20), 10, 10, 20, 20)]
    preds = [truth[0], _rect((20, 20), 0, 12, 5, 18), truth[1]]
    flat = mask_ap([(preds, [0.9, 0.8, 0.7], truth)])
    assert mask_ap([(preds, np.array([[0.9], [0.8], [0.7]]), truth)]) == flat


def test_ap_ranks_equal_scores_in_the_order_given() -> None:
    """40 images of one object, one prediction each, scored 0.5 or 0.6 (many ties), each a hit or a miss.
    Ranked by score with ties in the order given (COCO's stable sort), the AP follows from the 101-point
    rule computed here; numpy's default sort reorders these ties and gives another AP."""
    shape = (4, 4)
    truth = _rect(shape, 0, 0, 2, 2)
    scores = np.where(np.random.default_rng(0).random(40) < 0.5, 0.6, 0.5)
    hit = np.random.default_rng(1).random(40) < 0.5
    images = [([truth if h else _rect(shape, 2, 2, 4, 4)], [s], [truth]) for s, h in zip(scores, hit, strict=True)]

    def ap(ranked: np.ndarray) -> float:
        tp, fp = np.cumsum(ranked), np.cumsum(~ranked)
        precision = np.maximum.accumulate((tp / (tp + fp))[::-1])[::-1]
        recall = tp / 40
        return float(np.mean([precision[recall >= r].max() if (recall >= r).any() else 0.0
                              for r in np.linspace(0, 1, 101)]))

    assert mask_ap(images) == pytest.approx(ap(hit[np.argsort(-scores, kind="stable")]), rel=1e-12)
    assert abs(ap(hit[np.argsort(-scores)]) - mask_ap(images)) > 1e-3


def test_of_equal_scores_the_prediction_given_first_takes_the_truth() -> None:
    """40 copies of one exact prediction scored 0.5 or 0.6 (ties): the first given of the best score wins
    (COCO's stable sort); numpy's default sort would put another first."""
    truth = [_rect((6, 6), 1, 1, 5, 5)]
    scores = np.where(np.random.default_rng(15).random(40) < 0.5, 0.6, 0.5)
    first = int(np.flatnonzero(scores == 0.6)[0])
    assert int(np.argsort(-scores)[0]) != first
    matched = match_instances(truth * 40, scores, truth).matched
    assert np.flatnonzero(matched >= 0).tolist() == [first]
