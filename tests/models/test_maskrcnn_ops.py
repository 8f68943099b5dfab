"""Mask R-CNN ops (segflow.models.maskrcnn.ops) against direct references written here.

RoIAlign's reference transcribes torchvision's ``roi_align_kernel.cpp`` (forward, ``aligned``
flag, adaptive grid, border rules) into numpy loops; NMS's is the textbook greedy loop.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segflow.models.maskrcnn.ops import BoxCoder, batched_nms, box_iou, clip_boxes, nms, roi_align


def _bilinear(img: np.ndarray, y: float, x: float) -> float:
    h, w = img.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= h - 1:
        y_high = y_low = h - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= w - 1:
        x_high = x_low = w - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return float(hy * hx * img[y_low, x_low] + hy * lx * img[y_low, x_high]
                 + ly * hx * img[y_high, x_low] + ly * lx * img[y_high, x_high])


def _roi_align_reference(feat: np.ndarray, rois: np.ndarray, out: tuple[int, int], scale: float, ratio: int,
                         aligned: bool) -> np.ndarray:
    ph_n, pw_n = out
    result = np.zeros((len(rois), feat.shape[1], ph_n, pw_n))
    for r, roi in enumerate(rois):
        off = 0.5 if aligned else 0.0
        x1, y1, x2, y2 = (v * scale - off for v in roi[1:])
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph_n, rw / pw_n
        gh = ratio if ratio > 0 else math.ceil(rh / ph_n)
        gw = ratio if ratio > 0 else math.ceil(rw / pw_n)
        count = max(gh * gw, 1)
        for c in range(feat.shape[1]):
            img = feat[int(roi[0]), c]
            for ph in range(ph_n):
                for pw in range(pw_n):
                    acc = 0.0
                    for iy in range(gh):
                        y = y1 + ph * bh + (iy + 0.5) * bh / gh
                        for ix in range(gw):
                            x = x1 + pw * bw + (ix + 0.5) * bw / gw
                            acc += _bilinear(img, y, x)
                    result[r, c, ph, pw] = acc / count
    return result


def _random_rois(rng: np.random.Generator, n_images: int, h: int, w: int, count: int) -> np.ndarray:
    rows = []
    for _ in range(count):
        x1, y1 = rng.uniform(-0.4 * w, 1.1 * w), rng.uniform(-0.4 * h, 1.1 * h)
        bw, bh = rng.choice([rng.uniform(0.05, 1.0), rng.uniform(1, 0.8 * w)]), rng.uniform(0.05, 0.8 * h)
        rows.append([rng.integers(n_images), x1, y1, x1 + bw, y1 + bh])
    # hand-picked: whole image, at the border, beyond it, sub-pixel, degenerate, inverted
    rows += [[0, 0, 0, w, h], [1 % n_images, w - 1, h - 1, w + 2, h + 2], [0, -3, -3, -0.5, -0.5],
             [0, 2.3, 3.1, 2.6, 3.4], [0, 4, 4, 4, 4], [0, 5, 5, 3, 3], [0, -1.2, 2, 1.7, h + 1.5]]
    return np.asarray(rows, dtype=np.float64)


@pytest.mark.parametrize(("out", "ratio", "scale", "aligned"), [
    ((7, 7), 2, 1.0, True), ((3, 5), -1, 0.5, True), ((4, 4), 0, 0.25, True), ((2, 3), 3, 1.0, False),
    ((5, 2), -1, 1.0, False),
])
def test_roi_align_matches_reference(out: tuple[int, int], ratio: int, scale: float, aligned: bool) -> None:
    rng = np.random.default_rng(sum(out) + ratio)
    feat = rng.normal(size=(3, 2, 9, 11))
    h, w = int(9 / scale), int(11 / scale)
    rois = _random_rois(rng, 3, h, w, 20)
    got = roi_align(torch.from_numpy(feat), torch.from_numpy(rois), out, scale, ratio, aligned).numpy()
    want = _roi_align_reference(feat, rois, out, scale, ratio, aligned)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert np.abs(want).max() > 0.1  # the references are not all zeros
    got32 = roi_align(torch.from_numpy(feat).float(), torch.from_numpy(rois).float(), out, scale, ratio, aligned)
    np.testing.assert_allclose(got32.numpy(), want, atol=1e-4)


def test_roi_align_constant_and_ramp_closed_forms() -> None:
    # a box inside a constant image averages to the constant; on a ramp f(x) = x (at pixel centres
    # x + 0.5 -> value x) an aligned bin's mean is the value at its centre minus 0.5
    feat = torch.arange(16, dtype=torch.float64).repeat(1, 1, 16, 1)
    rois = torch.tensor([[0, 2.0, 3.0, 10.0, 7.0]], dtype=torch.float64)
    got = roi_align(feat, rois, (2, 4), 1.0, 2, True)[0, 0]
    centres = 2.0 + (torch.arange(4, dtype=torch.float64) + 0.5) * 2.0
    torch.testing.assert_close(got, (centres - 0.5).expand(2, 4))
    ones = roi_align(torch.ones(1, 3, 8, 8), torch.tensor([[0, 1.0, 1.0, 6.0, 5.0]]), 7, 1.0, -1, True)
    torch.testing.assert_close(ones, torch.ones(1, 3, 7, 7))


def test_roi_align_empty_and_chunked() -> None:
    feat = torch.randn(2, 4, 6, 6)
    assert roi_align(feat, torch.zeros(0, 5), 7).shape == (0, 4, 7, 7)
    rng = np.random.default_rng(1)
    rois = torch.from_numpy(_random_rois(rng, 2, 6, 6, 40)).float()
    whole = roi_align(feat, rois, 5, 1.0, 2)
    import segflow.models.maskrcnn.ops as ops
    budget = ops._ROI_ALIGN_BUDGET
    try:
        ops._ROI_ALIGN_BUDGET = 1000  # forces chunks of a few RoIs
        torch.testing.assert_close(roi_align(feat, rois, 5, 1.0, 2), whole)
    finally:
        ops._ROI_ALIGN_BUDGET = budget


def test_roi_align_gradcheck() -> None:
    torch.manual_seed(0)
    feat = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.3, 0.7, 4.2, 3.9], [1, -0.8, 1.2, 6.5, 5.3], [1, 2.2, 2.1, 2.9, 2.4]],
                        dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_align(f, rois, (3, 2), 1.0, -1, True), (feat,))
    assert torch.autograd.gradcheck(lambda f: roi_align(f, rois, 2, 0.5, 2, False), (feat,))


def _iou_np(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _nms_reference(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if all(_iou_np(boxes[i], boxes[j]) <= thr for j in keep):
            keep.append(i)
    return keep


def test_box_iou_closed_form() -> None:
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1]])
    b = torch.tensor([[1.0, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]])
    want = torch.tensor([[1 / 7, 1.0, 0.0], [0.0, 0.25, 0.0]])
    torch.testing.assert_close(box_iou(a, b), want)


@pytest.mark.parametrize("seed", range(6))
def test_nms_matches_greedy_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 120))
    xy = rng.uniform(0, 50, size=(n, 2))
    wh = rng.uniform(2, 25, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.integers(0, 8, size=n).astype(np.float64)  # many ties
    thr = float(rng.choice([0.3, 0.5, 0.7]))
    got = nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).tolist()
    assert got == _nms_reference(boxes, scores, thr)
    groups = rng.integers(0, 3, size=n)
    got_b = sorted(batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups),
                               thr).tolist())
    want_b = sorted(int(np.flatnonzero(groups == g)[i]) for g in range(3)
                    for i in _nms_reference(boxes[groups == g], scores[groups == g], thr))
    assert got_b == want_b


def test_nms_chain_and_empty() -> None:
    # a chain where greedy keeps 0, 2, 4 (1 suppressed by 0, so 2 survives although it overlaps 1)
    boxes = torch.tensor([[float(i), 0.0, i + 2.0, 2.0] for i in range(5)])
    scores = torch.tensor([5.0, 4, 3, 2, 1])
    assert nms(boxes, scores, 0.3).tolist() == [0, 2, 4]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).shape == (0,)


@pytest.mark.parametrize("weights", [(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0)])
def test_box_coder_round_trip_and_closed_form(weights: tuple[float, float, float, float]) -> None:
    coder = BoxCoder(weights)
    gen = torch.Generator().manual_seed(0)
    ref = torch.rand(50, 2, generator=gen, dtype=torch.float64) * 100
    ref = torch.cat([ref, ref + 1 + torch.rand(50, 2, generator=gen, dtype=torch.float64) * 50], 1)
    tgt = torch.rand(50, 2, generator=gen, dtype=torch.float64) * 100
    tgt = torch.cat([tgt, tgt + 1 + torch.rand(50, 2, generator=gen, dtype=torch.float64) * 50], 1)
    deltas = coder.encode(ref, tgt)
    torch.testing.assert_close(coder.decode(deltas, ref), tgt)
    # closed form: anchor (0, 0, 10, 20), target (5, 0, 25, 40): centre moves (10, 10), size x2
    d = coder.encode(torch.tensor([[0.0, 0, 10, 20]]), torch.tensor([[5.0, 0, 25, 40]]))
    wx, wy, ww, wh = weights
    torch.testing.assert_close(d, torch.tensor([[wx * 1.0, wy * 0.5, ww * math.log(2), wh * math.log(2)]]))
    # the size delta is clamped at log(1000 / 16) before exp
    huge = coder.decode(torch.tensor([[0.0, 0.0, 100.0 * ww, 0.0]]), torch.tensor([[0.0, 0, 10, 10]]))
    torch.testing.assert_close(huge[0, 2] - huge[0, 0], torch.tensor(10 * 1000 / 16))


def test_clip_boxes() -> None:
    got = clip_boxes(torch.tensor([[-5.0, 3, 70, 90]]), (64, 48))
    torch.testing.assert_close(got, torch.tensor([[0.0, 3, 48, 64]]))


def test_reduced_precision_samples_and_decodes_in_float32() -> None:
    """Under bf16 autocast RoIAlign samples the (bf16) features at float32 coordinates and box deltas decode
    in float32: bf16's 8 bits would put a box at x = 500 two pixels off."""
    from segflow.models.maskrcnn.ops import BoxCoder, roi_align

    g = torch.Generator().manual_seed(0)
    features = torch.rand(1, 3, 40, 40, generator=g).to(torch.bfloat16)
    rois = torch.tensor([[0, 3.3, 4.7, 30.1, 21.9], [0, 10.25, 0.5, 11.0, 39.5]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = roi_align(features, rois, 7, 1.0, 2)
    want = roi_align(features.float(), rois, 7, 1.0, 2)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.to(torch.bfloat16).float(), rtol=0, atol=0)
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    deltas = torch.tensor([[0.01, 0.0, 0.0, 0.0]], dtype=torch.bfloat16)
    boxes = coder.decode(deltas, torch.tensor([[400.0, 10.0, 600.0, 20.0]]))
    assert boxes.dtype == torch.float32
    torch.testing.assert_close(boxes, torch.tensor([[400.0 + 200 * float(deltas[0, 0]), 10.0,
                                                     600.0 + 200 * float(deltas[0, 0]), 20.0]]))
