"""Run an instance-segmentation network over the windows of a scene: detections in scene pixels.

A window's detections (``boxes, scores, labels, masks`` of :class:`segflow.models.maskrcnn.MaskRCNN`)
become :class:`Detection` records: the class, the score and the mask cropped to the rows and columns
its pixels occupy, placed in scene coordinates. Pixels that are nodata in the scene are removed from
every mask (a detection left with none is dropped), and detections scoring below the package's
``output.score_threshold`` are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..devices import resolve_device
from ..errors import ModelError
from ..models.package import ModelSpec
from ..precision import autocast_dtype, precision_for
from ..predict import InputNormalize
from ..tiling import Box

__all__ = ["Detection", "Detector", "Instance", "crop_detection"]

Index = tuple[int, ...]


@dataclass
class Instance:
    """One object of the scene: ``mask`` (bool ``(h, w)``) covers scene rows ``start[0] .. start[0] + h`` and
    columns ``start[1] .. start[1] + w``, the tight box of its pixels."""

    start: tuple[int, int]
    mask: np.ndarray
    label: int
    score: float

    @property
    def box(self) -> Box:
        return Box(tuple(self.start), tuple(int(s) + n for s, n in zip(self.start, self.mask.shape, strict=True)))

    @property
    def pixels(self) -> int:
        return int(np.count_nonzero(self.mask))


@dataclass
class Detection(Instance):
    """One object as one window (``window``, its grid index) saw it."""

    window: Index = field(kw_only=True)


def crop_detection(window: Index, origin: Sequence[int], mask: np.ndarray, label: int, score: float
                   ) -> Detection | None:
    """The detection of a full-window ``mask`` (bool ``(H, W)``) whose window starts at scene ``origin``,
    cropped to its pixels; None when it has none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return Detection((int(origin[0]) + r0, int(origin[1]) + c0), np.ascontiguousarray(mask[r0:r1, c0:c1]),
                     int(label), float(score), window=tuple(window))


class Detector:
    """The package's network on a device: windows ``(N, C, H, W)`` in, :class:`Detection` lists out.

    Inputs are normalised as the semantic :class:`~segflow.predict.Predictor` does; nodata pixels are
    set to 0 after normalisation so they never reach the network.
    """

    def __init__(self, module: nn.Module, spec: ModelSpec, *, device: str = "auto", batch_size: int = 4,
                 precision: str = "auto") -> None:
        self.spec = spec
        self.device = resolve_device(device)
        self.precision = precision_for(precision, self.device, spec)
        self.amp_dtype = autocast_dtype(self.precision)
        self.module = module.to(self.device).eval()
        self.normalize = InputNormalize(spec.input.normalization, len(spec.input.bands), 2).to(self.device)
        self.batch_size = max(1, int(batch_size))
        self.min_score = spec.output.min_score
        self.num_classes = len(spec.classes)

    @torch.inference_mode()
    def detect(self, windows: Sequence[Index], origins: Sequence[Sequence[int]], batch: np.ndarray,
               valid: np.ndarray | None = None) -> list[Detection]:
        """Detections of the windows ``batch`` ``(N, C, H, W)`` (``valid`` ``(N, H, W)`` or None), in scene
        coordinates (window ``windows[i]`` starts at ``origins[i]``), in window order, each window's by
        decreasing score."""
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        x = self.normalize(x, inplace=True)
        mask = None
        if valid is not None and not valid.all():
            mask = torch.from_numpy(np.ascontiguousarray(valid)).to(self.device)
            x = torch.where(mask[:, None], x, torch.zeros((), device=self.device))
        if self.amp_dtype is not None:
            with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype):
                found = self.module(x)
        else:
            found = self.module(x)
        if not isinstance(found, list) or len(found) != len(batch):
            raise ModelError(f"model {self.spec.name!r} returned {type(found).__name__} for {len(batch)} windows; an "
                             "instance model returns one dict of boxes, scores, labels and masks per window")
        out: list[Detection] = []
        for i, det in enumerate(found):
            scores = det["scores"].float().cpu().numpy()
            labels = det["labels"].cpu().numpy()
            masks = det["masks"]
            if mask is not None:
                masks = masks & mask[i]
            masks_np = masks.cpu().numpy()
            bad = (labels < 1) | (labels >= self.num_classes)
            if bad.any():
                raise ModelError(f"model {self.spec.name!r} returned class {int(labels[bad][0])}; its model.yaml "
                                 f"has classes 1..{self.num_classes - 1} for objects")
            for k in np.argsort(-scores, kind="stable"):
                if scores[k] < self.min_score:
                    continue
                found_one = crop_detection(windows[i], origins[i], masks_np[k], int(labels[k]), float(scores[k]))
                if found_one is not None:
                    out.append(found_one)
        return out
