"""Detection ops in plain torch: RoIAlign, box IoU, (batched) NMS, Faster R-CNN box coding.

Boxes are ``(x1, y1, x2, y2)`` in pixel units of the image (or feature map times ``1 / spatial_scale``),
continuous coordinates: pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)`` and its centre is
``(j + 0.5, i + 0.5)``. Written here because torchvision (which has these ops in C++) does not load
with the CPU torch the project runs on; the semantics follow torchvision's kernels so that weights
and results carry over.
"""

from __future__ import annotations

import math
import warnings

import torch

__all__ = [
    "BoxCoder",
    "batched_nms",
    "box_area",
    "box_iou",
    "clip_boxes",
    "nms",
    "remove_small_boxes",
    "roi_align",
]

# bound on gathered values per chunk of RoIs in roi_align (elements of the (points, C) gather)
_ROI_ALIGN_BUDGET = 1 << 23


def _axis_weights(coord: torch.Tensor, valid: torch.Tensor, size: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear taps along one axis, as torchvision's ``bilinear_interpolate``: indices low/high and
    weights (zero for a sample outside ``[-1, size]`` or not in the RoI's grid)."""
    outside = (coord < -1.0) | (coord > size)
    c = coord.clamp(min=0.0)
    low = c.floor().long()
    at_end = low >= size - 1
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    high = torch.where(at_end, low, low + 1)
    c = torch.where(at_end, low.to(c.dtype), c)
    frac = c - low.to(c.dtype)
    keep = (valid & ~outside).to(c.dtype)
    return low, high, (1.0 - frac) * keep, frac * keep


def roi_align(features: torch.Tensor, rois: torch.Tensor, output_size: int | tuple[int, int],
              spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = True) -> torch.Tensor:
    """RoIAlign (He et al. 2017) with torchvision's ``roi_align`` semantics.

    ``features`` ``(N, C, H, W)``; ``rois`` ``(K, 5)`` rows ``(batch_index, x1, y1, x2, y2)`` in input
    pixel units, scaled by ``spatial_scale`` onto the feature map. Each of the ``output_size`` bins is
    the average of ``sampling_ratio`` x ``sampling_ratio`` regular bilinear samples (adaptive
    ``ceil(roi_size / output_size)`` per axis and per RoI when ``sampling_ratio <= 0``); ``aligned``
    shifts the box by -0.5 so that sample positions are relative to pixel centres. Samples outside
    ``[-1, H] x [-1, W]`` count as 0, those in ``[-1, 0)`` clamp to 0. Returns ``(K, C, oh, ow)``,
    differentiable with respect to ``features`` (not to the boxes, as in torchvision). Vectorised:
    all RoIs' sample points are gathered at once (in chunks of RoIs bounded in memory).
    """
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    n, c, h, w = features.shape
    k = rois.shape[0]
    if k == 0 or c == 0:
        return features.new_zeros((k, c, oh, ow))
    if torch.is_autocast_enabled(features.device.type) or features.dtype in (torch.bfloat16, torch.float16):
        # reduced precision: sample in float32 (bf16 holds 8 bits, coordinates would be 2 px off at 500) and
        # outside autocast (the sparse product has no bf16 kernel); the bins come back in the features' dtype
        with torch.autocast(device_type=features.device.type, enabled=False):
            return roi_align(features.float(), rois.float(), (oh, ow), spatial_scale, sampling_ratio,
                             aligned).to(features.dtype)
    rois = rois.detach().to(features.dtype)
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    rw = rois[:, 3] * spatial_scale - offset - x1
    rh = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    bin_h, bin_w = rh / oh, rw / ow
    if sampling_ratio > 0:
        gh = torch.full((k,), sampling_ratio, dtype=torch.long, device=rois.device)
        gw = gh
    else:
        gh, gw = torch.ceil(rh / oh).long(), torch.ceil(rw / ow).long()
    gh_max, gw_max = max(int(gh.max()), 1), max(int(gw.max()), 1)
    flat = features.permute(0, 2, 3, 1).reshape(n * h * w, c)
    per_roi = oh * gh_max * ow * gw_max * 4
    step = max(1, _ROI_ALIGN_BUDGET // max(per_roi, 1))
    chunks = []
    for start in range(0, k, step):
        sl = slice(start, start + step)
        chunks.append(_roi_align_chunk(flat, rois[sl, 0].long(), (h, w), (oh, ow), (gh_max, gw_max),
                                       (y1[sl], x1[sl]), (bin_h[sl], bin_w[sl]), (gh[sl], gw[sl])))
    return torch.cat(chunks) if len(chunks) > 1 else chunks[0]


def _roi_align_chunk(flat: torch.Tensor, batch: torch.Tensor, hw: tuple[int, int], out: tuple[int, int],
                     gmax: tuple[int, int], start: tuple[torch.Tensor, torch.Tensor],
                     bins: tuple[torch.Tensor, torch.Tensor], grid: tuple[torch.Tensor, torch.Tensor]
                     ) -> torch.Tensor:
    """RoIAlign of a chunk of RoIs from ``flat`` ``(N * H * W, C)``; see :func:`roi_align`."""
    h, w = hw
    taps = []
    for axis in range(2):  # 0: y (rows), 1: x (columns)
        g = grid[axis].clamp(min=1).to(flat.dtype)[:, None, None]
        p = torch.arange(out[axis], device=flat.device, dtype=flat.dtype)[None, :, None]
        i = torch.arange(gmax[axis], device=flat.device)
        coord = start[axis][:, None, None] + p * bins[axis][:, None, None] \
            + (i.to(flat.dtype) + 0.5)[None, None, :] * bins[axis][:, None, None] / g
        valid = (i[None, None, :] < grid[axis][:, None, None]).expand_as(coord)
        taps.append(_axis_weights(coord, valid, h if axis == 0 else w))  # each (K, out, G)
    (ylo, yhi, wylo, wyhi), (xlo, xhi, wxlo, wxhi) = taps
    k = batch.shape[0]
    oh, ow = out
    count = (grid[0] * grid[1]).clamp(min=1).to(flat.dtype)[:, None, None, None, None]
    base = (batch * (h * w))[:, None, None, None, None]
    # one row of a sparse (K * oh * ow, N * H * W) sampling matrix per output bin: its 4 G^2
    # bilinear taps with weight / count (duplicates summed), applied by one sparse matmul
    cols, vals = [], []
    for yi, wy in ((ylo, wylo), (yhi, wyhi)):
        for xi, wx in ((xlo, wxlo), (xhi, wxhi)):
            cols.append(base + yi[:, :, :, None, None] * w + xi[:, None, None, :, :])
            vals.append(wy[:, :, :, None, None] * wx[:, None, None, :, :] / count)
    # (4, K, oh, Gh, ow, Gw) -> rows (K, oh, ow) of 4 Gh Gw entries each, in row order (CSR)
    col = torch.stack(cols).permute(1, 2, 4, 0, 3, 5).reshape(-1)
    val = torch.stack(vals).permute(1, 2, 4, 0, 3, 5).reshape(-1)
    per_row = 4 * gmax[0] * gmax[1]
    crow = torch.arange(0, col.numel() + 1, per_row, device=flat.device)
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_csr_tensor(crow, col, val, (k * oh * ow, flat.shape[0]), check_invariants=False)
    result = torch.sparse.mm(matrix, flat)  # (K * oh * ow, C)
    return result.reshape(k, oh, ow, -1).permute(0, 3, 1, 2).contiguous()


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area ``(x2 - x1) * (y2 - y1)`` of ``(K, 4)`` boxes (negative for inverted boxes, as torchvision)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU ``(A, B)`` between boxes ``a`` ``(A, 4)`` and ``b`` ``(B, 4)``; 0/0 (two empty boxes) gives NaN."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: indices of the kept boxes, by decreasing score.

    A box is dropped when its IoU with a kept, higher-ranked box is ``> iou_threshold`` (torchvision's
    rule). Ties in score rank by index (stable sort). Computed as Cluster-NMS (Zheng et al. 2021):
    iterate ``keep_j = not any_{i<j}(keep_i and IoU_ij > t)`` from all-kept to its fixed point, which
    is exactly the greedy result (entry ``j`` depends only on earlier entries, so after ``t`` rounds the
    first ``t`` are final); usually a handful of ``N x N`` matrix rounds instead of ``N`` Python steps.
    """
    if boxes.shape[0] == 0:
        return torch.zeros((0,), dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order]
    over = torch.triu(box_iou(b, b) > iou_threshold, diagonal=1)
    keep = torch.ones(b.shape[0], dtype=torch.bool, device=boxes.device)
    for _ in range(b.shape[0]):
        new = ~(over & keep[:, None]).any(dim=0)
        if torch.equal(new, keep):
            break
        keep = new
    return order[keep]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float
                ) -> torch.Tensor:
    """NMS within each group (class or level) independently: the result of torchvision's
    ``batched_nms`` (kept indices by decreasing score), computed group by group (smaller IoU
    matrices than its coordinate-offset trick, which gives the same boxes)."""
    if boxes.shape[0] == 0:
        return torch.zeros((0,), dtype=torch.long, device=boxes.device)
    kept = []
    for group in torch.unique(groups):
        members = torch.where(groups == group)[0]
        kept.append(members[nms(boxes[members], scores[members], iou_threshold)])
    keep = torch.cat(kept)
    order = torch.sort(scores[keep], descending=True, stable=True).indices
    return keep[order]


def clip_boxes(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Boxes ``(..., 4)`` clipped to an image of ``size`` ``(height, width)``."""
    h, w = size
    x = boxes[..., 0::2].clamp(0, w)
    y = boxes[..., 1::2].clamp(0, h)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def remove_small_boxes(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Indices of the boxes whose width and height are both ``>= min_size``."""
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    return torch.where(keep)[0]


class BoxCoder:
    """Faster R-CNN box deltas: ``dx = wx (gx - ax) / aw``, ``dy = wy (gy - ay) / ah``,
    ``dw = ww log(gw / aw)``, ``dh = wh log(gh / ah)`` with centres ``x1 + w / 2``; decoding clamps
    ``dw, dh`` (after dividing by the weights) at ``log(1000 / 16)`` so ``exp`` cannot overflow.
    ``weights`` (10, 10, 5, 5) for the box head, (1, 1, 1, 1) for the RPN, as in Detectron."""

    def __init__(self, weights: tuple[float, float, float, float], clamp: float = math.log(1000.0 / 16)) -> None:
        self.weights = weights
        self.clamp = clamp

    def encode(self, reference: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Deltas ``(K, 4)`` that turn ``reference`` boxes ``(K, 4)`` into ``target`` boxes ``(K, 4)``."""
        wx, wy, ww, wh = self.weights
        aw, ah = reference[:, 2] - reference[:, 0], reference[:, 3] - reference[:, 1]
        ax, ay = reference[:, 0] + 0.5 * aw, reference[:, 1] + 0.5 * ah
        gw, gh = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1]
        gx, gy = target[:, 0] + 0.5 * gw, target[:, 1] + 0.5 * gh
        return torch.stack((wx * (gx - ax) / aw, wy * (gy - ay) / ah,
                            ww * torch.log(gw / aw), wh * torch.log(gh / ah)), dim=1)

    def decode(self, deltas: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Boxes from ``deltas`` ``(K, 4 * M)`` (M boxes per reference, e.g. one per class) and
        ``reference`` ``(K, 4)``: ``(K, 4 * M)``."""
        wx, wy, ww, wh = self.weights
        if deltas.dtype in (torch.bfloat16, torch.float16):  # a head run under autocast: boxes in float32
            deltas = deltas.float()
        reference = reference.to(deltas.dtype)
        aw, ah = reference[:, 2:3] - reference[:, 0:1], reference[:, 3:4] - reference[:, 1:2]
        ax, ay = reference[:, 0:1] + 0.5 * aw, reference[:, 1:2] + 0.5 * ah
        dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.clamp)
        cx, cy = dx * aw + ax, dy * ah + ay
        pw, ph = torch.exp(dw) * aw, torch.exp(dh) * ah
        out = torch.stack((cx - 0.5 * pw, cy - 0.5 * ph, cx + 0.5 * pw, cy + 0.5 * ph), dim=2)
        return out.reshape(deltas.shape[0], -1)
