"""Mask R-CNN parts: losses against closed forms, anchors, FPN level rule, matching, sampling, targets."""

from __future__ import annotations

import math

import pytest
import torch

from segflow.models.maskrcnn.anchors import grid_anchors
from segflow.models.maskrcnn.backbone import ResNetFPN
from segflow.models.maskrcnn.heads import level_of_rois
from segflow.models.maskrcnn.losses import box_loss, mask_loss, rpn_losses, smooth_l1
from segflow.models.maskrcnn.model import paste_masks
from segflow.models.maskrcnn.targets import BELOW, BETWEEN, mask_targets, match, sample_balanced


def test_smooth_l1_closed_form() -> None:
    pred, target = torch.tensor([0.05, -0.5, 2.0]), torch.zeros(3)
    beta = 1.0 / 9
    want = 0.5 * 0.05**2 / beta + (0.5 - 0.5 * beta) + (2.0 - 0.5 * beta)
    torch.testing.assert_close(smooth_l1(pred, target, beta), torch.tensor(want))


def test_rpn_losses_closed_form() -> None:
    logits = torch.tensor([0.0, 2.0, -1.0, 1.0])
    labels = torch.tensor([1, 0, 0, 1])
    deltas = torch.tensor([[0.1, 0, 0, 0], [5.0, 5, 5, 5], [9.0, 9, 9, 9], [0, 0, 0, -1.0]])
    target = torch.zeros(4, 4)
    obj, box = rpn_losses(logits, labels, deltas, target)
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus: BCE(x, 1) = sp(-x), BCE(x, 0) = sp(x)
    torch.testing.assert_close(obj, torch.tensor((sp(-0.0) + sp(2.0) + sp(-1.0) + sp(-1.0)) / 4))
    beta = 1.0 / 9
    torch.testing.assert_close(box, torch.tensor((0.5 * 0.1**2 / beta + (1.0 - beta / 2)) / 4))  # negatives ignored


def test_box_loss_closed_form() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    labels = torch.tensor([0, 2])
    deltas = torch.zeros(2, 12)
    deltas[1, 8:12] = torch.tensor([0.05, 0.0, 0.0, 0.0])  # class 2's deltas
    deltas[1, 4:8] = 7.0  # class 1's deltas must not count
    deltas[0] = 9.0  # background RoI's deltas must not count
    cls, box = box_loss(logits, deltas, labels, torch.zeros(2, 4))
    lse = lambda r: math.log(sum(math.exp(v) for v in r))  # noqa: E731
    want_cls = ((lse([2, 0, 0]) - 2) + (lse([0, 1, 3]) - 3)) / 2
    torch.testing.assert_close(cls, torch.tensor(want_cls))
    torch.testing.assert_close(box, torch.tensor(0.5 * 0.05**2 * 9 / 2))


def test_mask_loss_gt_class_only() -> None:
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1] = torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    logits[0, 2] = 50.0  # other class: ignored
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    want = (sp(-1.0) + sp(-1.0) + sp(-0.0) + sp(2.0)) / 4
    torch.testing.assert_close(mask_loss(logits, torch.tensor([1]), target), torch.tensor(want))
    empty = mask_loss(torch.zeros(0, 3, 2, 2, requires_grad=True), torch.zeros(0, dtype=torch.long),
                      torch.zeros(0, 2, 2))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_anchors_centres_sizes_and_order() -> None:
    (a,) = grid_anchors([(2, 3)], [8], [16.0], [0.5, 1.0, 2.0])
    assert a.shape == (2 * 3 * 3, 4)
    centres = (a[:, :2] + a[:, 2:]) / 2
    # cell (1, 2), ratio index 1 is row (1 * 3 + 2) * 3 + 1
    torch.testing.assert_close(centres[(1 * 3 + 2) * 3 + 1], torch.tensor([20.0, 12.0]))
    wh = a[:3, 2:] - a[:3, :2]
    torch.testing.assert_close(wh[:, 1] / wh[:, 0], torch.tensor([0.5, 1.0, 2.0]))
    torch.testing.assert_close(wh[:, 0] * wh[:, 1], torch.full((3,), 256.0))


def test_fpn_level_rule() -> None:
    sides = torch.tensor([50.0, 111.0, 112.0, 224.0, 447.0, 448.0, 2000.0])
    boxes = torch.stack([torch.zeros(7), torch.zeros(7), sides, sides], 1)
    want = [max(2, min(5, math.floor(4 + math.log2(s / 224 + 1e-6)))) for s in sides.tolist()]
    assert level_of_rois(boxes, 2, 5).tolist() == want == [2, 2, 3, 4, 4, 5, 5]


def test_backbone_levels() -> None:
    fpn = ResNetFPN("resnet18", in_channels=5, width=16).eval()
    with torch.no_grad():
        levels = fpn(torch.randn(1, 5, 64, 128))
    assert [tuple(f.shape) for f in levels] == [(1, 16, 64 // s, 128 // s) for s in (4, 8, 16, 32, 64)]
    torch.testing.assert_close(levels[4], levels[3][:, :, ::2, ::2])


def test_match_thresholds_and_low_quality() -> None:
    gt = torch.tensor([[0.0, 0, 10, 10], [100.0, 100, 110, 110]])
    boxes = torch.tensor([[0.0, 0, 10, 10],  # IoU 1 with gt 0
                          [0.0, 0, 10, 12],  # 0.833 -> gt 0
                          [0.0, 0, 10, 20],  # 0.5 -> between
                          [50.0, 50, 60, 60],  # 0 -> below
                          [100.0, 100, 115, 115]])  # 0.444 with gt 1: its best -> low-quality match
    assert match(gt, boxes, 0.7, 0.3, allow_low_quality=False).tolist() == [0, 0, BETWEEN, BELOW, BETWEEN]
    assert match(gt, boxes, 0.7, 0.3, allow_low_quality=True).tolist() == [0, 0, BETWEEN, BELOW, 1]
    assert match(gt[:0], boxes, 0.7, 0.3, True).tolist() == [BELOW] * 5


def test_sample_balanced_fractions() -> None:
    torch.manual_seed(0)
    labels = torch.tensor([1] * 100 + [0] * 1000 + [-1] * 50)
    pos, neg = sample_balanced(labels, 256, 0.5)
    assert (pos.numel(), neg.numel()) == (100, 156)
    assert bool((labels[pos] == 1).all()) and bool((labels[neg] == 0).all())
    assert len(set(neg.tolist())) == 156
    pos, neg = sample_balanced(labels, 64, 0.25)
    assert (pos.numel(), neg.numel()) == (16, 48)


def test_mask_targets_and_paste_round_trip() -> None:
    mask = torch.zeros(1, 40, 40)
    mask[0, 10:30, 5:15] = 1  # left half of the RoI below
    rois = torch.tensor([[5.0, 10.0, 25.0, 30.0]])
    target = mask_targets(mask, torch.tensor([0]), rois, 28)
    want = torch.zeros(28, 28)
    want[:, :14] = 1
    torch.testing.assert_close(target[0], want)
    pasted = paste_masks(target, rois, (40, 40))[0] >= 0.5
    assert torch.equal(pasted, mask[0].bool())


@pytest.mark.parametrize("shift", [0.0, 0.25])
def test_paste_masks_sub_pixel_box(shift: float) -> None:
    box = torch.tensor([[3.0 + shift, 4.0, 13.0 + shift, 9.0]])
    pasted = paste_masks(torch.ones(1, 28, 28), box, (16, 16))[0]
    inside = pasted >= 0.5
    ys, xs = torch.where(inside)
    assert (int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())) == (4, 8, 3, 12)
