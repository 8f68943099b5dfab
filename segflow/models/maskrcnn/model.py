"""Mask R-CNN (He et al. 2017) with a ResNet-FPN backbone, in plain torch.

See the package docstring for the interface. Inputs ``(N, C, H, W)`` float of any size are padded
with zeros at the bottom and right to a multiple of 32; boxes and masks are returned in the
coordinates of the unpadded input (pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segflow.errors import ConfigError, InputError
from segflow.models.maskrcnn.backbone import FPN_STRIDES, ResNetFPN
from segflow.models.maskrcnn.ops import clip_boxes
from segflow.models.maskrcnn.roi_heads import RoIHeads, RoISettings
from segflow.models.maskrcnn.rpn import RPN, RPNSettings

__all__ = ["MaskRCNN", "MaskRCNNConfig", "build_maskrcnn", "config_args", "paste_masks"]

_DEPTHS = ("resnet18", "resnet34", "resnet50")
_MULTIPLE = 32


@dataclass(frozen=True)
class MaskRCNNConfig:
    """``num_classes`` counts the background (class 0): thing classes + 1. ``mask_threshold`` binarises
    the pasted mask probabilities (0.5 in the paper). ``trunk_width``: the ResNet's base width (64 as
    torchvision, whose ImageNet weights then load into ``backbone.body``; 16 for a slim model)."""

    num_classes: int = 2
    in_channels: int = 3
    depth: str = "resnet18"
    fpn_width: int = 64
    trunk_width: int = 64
    rpn: RPNSettings = field(default_factory=RPNSettings)
    roi: RoISettings = field(default_factory=RoISettings)
    mask_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ConfigError(f"maskrcnn: num_classes={self.num_classes} must count the background too "
                              "(thing classes + 1, at least 2)")
        if self.in_channels < 1:
            raise ConfigError(f"maskrcnn: in_channels={self.in_channels} must be >= 1")
        if self.depth not in _DEPTHS:
            raise ConfigError(f"maskrcnn: depth={self.depth!r} is unknown; use one of {', '.join(_DEPTHS)}")
        if len(self.rpn.anchor_sizes) != len(FPN_STRIDES):
            raise ConfigError(f"maskrcnn: rpn.anchor_sizes needs {len(FPN_STRIDES)} sizes (P2..P6), "
                              f"got {self.rpn.anchor_sizes}")


def _settings(kind: type[Any], given: Any, where: str) -> Any:
    if given is None:
        return kind()
    if not isinstance(given, Mapping):
        raise ConfigError(f"maskrcnn: {where} must be a mapping of settings, got {given!r}")
    known = {f.name: f for f in fields(kind)}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(f"maskrcnn: unknown {where} settings {unknown}; known: {', '.join(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    return kind(**values)


def build_maskrcnn(in_channels: int, num_classes: int, args: Mapping[str, Any]) -> MaskRCNN:
    """The network of a package's ``architecture: {name: maskrcnn, args: ...}``.

    ``args``: ``depth`` (resnet18 | resnet34 | resnet50), ``fpn_width``, ``trunk_width``, ``mask_threshold`` and the
    mappings ``rpn`` and ``roi`` of :class:`RPNSettings` / :class:`RoISettings` fields (lists for tuples);
    ``num_classes`` counts the background (the package's classes).
    """
    args = dict(args)
    rpn = _settings(RPNSettings, args.pop("rpn", None), "rpn")
    roi = _settings(RoISettings, args.pop("roi", None), "roi")
    known = {"depth", "fpn_width", "trunk_width", "mask_threshold"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ConfigError(f"maskrcnn: unknown args {unknown}; known: depth, fpn_width, trunk_width, mask_threshold, "
                          "rpn, roi")
    return MaskRCNN(MaskRCNNConfig(num_classes=num_classes, in_channels=in_channels, rpn=rpn, roi=roi, **args))


def config_args(config: MaskRCNNConfig) -> dict[str, Any]:
    """``architecture.args`` that :func:`build_maskrcnn` turns back into ``config`` (settings that differ
    from the defaults only, tuples as lists)."""
    out: dict[str, Any] = {"depth": config.depth, "fpn_width": config.fpn_width, "trunk_width": config.trunk_width}
    if config.mask_threshold != 0.5:
        out["mask_threshold"] = config.mask_threshold
    for name, value, default in (("rpn", config.rpn, RPNSettings()), ("roi", config.roi, RoISettings())):
        changed = {f.name: list(v) if isinstance(v := getattr(value, f.name), tuple) else v
                   for f in fields(value) if getattr(value, f.name) != getattr(default, f.name)}
        if changed:
            out[name] = changed
    return out


def paste_masks(probs: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Mask probabilities ``(D, M, M)`` (each spanning its box ``(D, 4)``) resampled bilinearly onto the
    pixel centres of an image of ``size`` ``(H, W)``: ``(D, H, W)``, 0 outside the box's reach.

    Mask cell ``u`` of M covers ``[x1 + u w / M, x1 + (u + 1) w / M)``; a pixel centre ``x + 0.5``
    sits at normalised coordinate ``2 (x + 0.5 - x1) / w - 1`` of ``grid_sample`` (align_corners
    False), which fades to zero half a cell beyond the box (zero padding).
    """
    d = probs.shape[0]
    h, w = size
    if d == 0:
        return probs.new_zeros((0, h, w))
    xs = torch.arange(w, device=probs.device, dtype=probs.dtype) + 0.5
    ys = torch.arange(h, device=probs.device, dtype=probs.dtype) + 0.5
    bw = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-6)[:, None]
    bh = (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-6)[:, None]
    gx = 2 * (xs[None] - boxes[:, 0:1]) / bw - 1  # (D, W)
    gy = 2 * (ys[None] - boxes[:, 1:2]) / bh - 1  # (D, H)
    grid = torch.stack((gx[:, None, :].expand(d, h, w), gy[:, :, None].expand(d, h, w)), dim=-1)
    return F.grid_sample(probs[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


class MaskRCNN(nn.Module):
    """Mask R-CNN; ``forward(images, targets=None)`` (see the package docstring)."""

    def __init__(self, config: MaskRCNNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MaskRCNNConfig()
        self.backbone = ResNetFPN(config.depth, config.in_channels, config.fpn_width, config.trunk_width)
        self.rpn = RPN(config.fpn_width, config.rpn)
        self.roi_heads = RoIHeads(config.fpn_width, config.num_classes, config.roi)

    def forward(self, images: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]] | None = None
                ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Training (``self.training``): ``targets`` required, returns the losses; else detections."""
        self._check(images, targets)
        h, w = images.shape[-2:]
        ph, pw = -(-h // _MULTIPLE) * _MULTIPLE, -(-w // _MULTIPLE) * _MULTIPLE
        padded = F.pad(images, (0, pw - w, 0, ph - h))
        levels = self.backbone(padded)
        strides = FPN_STRIDES
        if self.training:
            assert targets is not None
            targets = [{**t, "masks": F.pad(t["masks"].float(), (0, pw - w, 0, ph - h))} for t in targets]
            proposals, losses = self.rpn(levels, (ph, pw), strides, [t["boxes"] for t in targets])
            losses.update(self.roi_heads.losses(levels[:4], strides[:4], proposals, targets))
            return losses
        proposals, _ = self.rpn(levels, (ph, pw), strides)
        detections = self.roi_heads.detect(levels[:4], strides[:4], proposals, (ph, pw))
        for det in detections:
            det["boxes"] = clip_boxes(det["boxes"], (h, w))
            probs = paste_masks(det.pop("mask_probs"), det["boxes"], (h, w))
            det["masks"] = probs >= self.config.mask_threshold
        return detections

    def _check(self, images: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]] | None) -> None:
        c = self.config.in_channels
        if images.ndim != 4 or images.shape[1] != c or not images.is_floating_point():
            raise InputError(f"maskrcnn: images must be float (N, {c}, H, W), got {tuple(images.shape)} "
                             f"{images.dtype}; pass the {c} bands of each image as one float batch")
        if not self.training:
            return
        if targets is None or len(targets) != images.shape[0]:
            raise InputError("maskrcnn: training needs one target dict (boxes, labels, masks) per image; "
                             "call model.eval() for inference")
        h, w = images.shape[-2:]
        for i, t in enumerate(targets):
            g = t["boxes"].shape[0]
            if t["boxes"].shape != (g, 4) or t["labels"].shape != (g,) or t["masks"].shape != (g, h, w):
                raise InputError(f"maskrcnn: target {i} needs boxes (G, 4), labels (G,), masks (G, {h}, {w}); got "
                                 f"{tuple(t['boxes'].shape)}, {tuple(t['labels'].shape)}, {tuple(t['masks'].shape)}")
            if g and (int(t["labels"].min()) < 1 or int(t["labels"].max()) >= self.config.num_classes):
                raise InputError(f"maskrcnn: target {i} labels must be in 1..{self.config.num_classes - 1} "
                                 "(0 is the background)")
