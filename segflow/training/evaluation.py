"""Quality of a model under training: metrics on validation chips and on whole test scenes.

:func:`evaluate_chips` scores a network on pre-read validation chips (one forward pass per
batch, no stitching); :func:`evaluate_sliding_window` scores a model package the way
``tile-infer`` runs it: overlapping windows of the package's tile size blended over each
scene or volume, then compared with the truth chunk by chunk. Both report per-class IoU and
Dice, mean IoU, pixel accuracy and object F1 at IoU >= 0.5 for ``thing`` classes; labels come
from the logits as the model's outputs give them (arg-max, binary sigmoid, or per-class thresholds
of a multi-label model, scored class by class: :mod:`~segflow.training.output_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..metrics import ConfusionMatrix, ObjectScore, instances_from_mask, object_f1
from ..models.output import OutputSpec
from ..models.package import ModelSpec
from ..predict import Predictor
from ..stitch import blend_chunks
from ..tiling import ChunkGrid, WindowGrid
from .object_scores import SourceObjects
from .output_config import thresholds_of
from .output_metrics import MultiLabelAccumulator, predict_labels
from .sources import IGNORE, ChipSource, source_scene

__all__ = ["Metrics", "MetricsAccumulator", "accumulator_for", "evaluate_chips", "evaluate_sliding_window"]


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 4)


@dataclass(frozen=True)
class Metrics:
    """Segmentation quality.

    Attributes
    ----------
    class_names : tuple of str
        One name per class, in label order.
    iou, dice : tuple of float
        Per-class IoU and Dice (NaN for a class absent from truth and prediction).
    mean_iou : float
        Mean IoU over the classes present in truth or prediction.
    pixel_accuracy : float
        Fraction of labelled pixels predicted right.
    object_f1 : dict of str to float
        Object F1 at IoU >= 0.5 for each ``thing`` class.
    pixels : int
        Number of labelled pixels counted.
    """

    class_names: tuple[str, ...]
    iou: tuple[float, ...]
    dice: tuple[float, ...]
    mean_iou: float
    pixel_accuracy: float
    object_f1: dict[str, float] = field(default_factory=dict)
    pixels: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (NaN becomes None)."""
        return {
            "mean_iou": _round(self.mean_iou),
            "pixel_accuracy": _round(self.pixel_accuracy),
            "iou": {n: _round(v) for n, v in zip(self.class_names, self.iou, strict=True)},
            "dice": {n: _round(v) for n, v in zip(self.class_names, self.dice, strict=True)},
            "object_f1": {n: _round(v) for n, v in self.object_f1.items()},
            "pixels": self.pixels,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metrics:
        """Inverse of :meth:`to_dict`."""
        names = tuple(data["iou"])

        def num(v: float | None) -> float:
            return math.nan if v is None else float(v)

        return cls(names, tuple(num(data["iou"][n]) for n in names), tuple(num(data["dice"][n]) for n in names),
                   num(data["mean_iou"]), num(data["pixel_accuracy"]),
                   {n: num(v) for n, v in data["object_f1"].items()}, int(data["pixels"]))

    def summary(self) -> str:
        """One line: mean IoU, pixel accuracy, per-class IoU and Dice, object F1."""
        per_class = ", ".join(
            f"{n} {i:.3f}/{d:.3f}" for n, i, d in zip(self.class_names, self.iou, self.dice, strict=True)
            if not math.isnan(i)
        )
        objects = "".join(f"; object F1 {n} {v:.3f}" for n, v in self.object_f1.items() if not math.isnan(v))
        return (f"mean IoU {self.mean_iou:.3f}, pixel accuracy {self.pixel_accuracy:.3f}; "
                f"IoU/Dice per class: {per_class}{objects}")


class MetricsAccumulator:
    """Adds up a confusion matrix and object matches over chunks of (prediction, truth).

    Truth pixels equal to :data:`~segflow.training.sources.IGNORE` are left out; a prediction of
    :data:`IGNORE` (no prediction, e.g. an uncovered pixel) on a labelled pixel is a miss of the true
    class (:class:`~segflow.metrics.ConfusionMatrix` ``no_prediction``), as ``segflow eval`` counts it.
    Objects of ``things`` are matched within each chunk: right for independent chips; whole sources
    pass no ``things`` and get seam-safe object counts instead
    (:class:`~segflow.training.object_scores.SourceObjects`). ``output`` (softmax by default, or a
    binary sigmoid) says how :meth:`predict` labels logits.
    """

    def __init__(self, class_names: Sequence[str], things: Sequence[int], output: OutputSpec | None = None):
        self.output = output
        self.names = tuple(class_names)
        self.things = tuple(things)
        self.matrix = ConfusionMatrix(len(self.names), ignore_index=IGNORE, no_prediction=IGNORE)
        self.objects = {k: ObjectScore.from_counts(0, 0, 0) for k in self.things}

    def predict(self, logits: torch.Tensor) -> np.ndarray:
        """Labels ``(N, *chip)`` uint8 from logits ``(N, C_out, *chip)``: the arg-max, or binary sigmoid > 0.5."""
        return predict_labels(logits, self.output)

    def update(self, pred: np.ndarray, truth: np.ndarray) -> None:
        """Count one chunk: ``pred`` and ``truth`` are label arrays of the same spatial shape."""
        pred = np.where(truth == IGNORE, IGNORE, pred).astype(np.uint8)
        self.matrix.update(pred, truth)
        for k in self.things:
            score = object_f1(instances_from_mask(pred, k), instances_from_mask(truth, k))
            self.objects[k] = self.objects[k] + score

    def result(self) -> Metrics:
        """The metrics of everything counted so far."""
        return Metrics(
            class_names=self.names,
            iou=tuple(float(v) for v in self.matrix.iou()),
            dice=tuple(float(v) for v in self.matrix.dice()),
            mean_iou=self.matrix.mean_iou(),
            pixel_accuracy=self.matrix.pixel_accuracy(),
            object_f1={self.names[k]: s.f1 for k, s in self.objects.items()},
            pixels=self.matrix.total,
        )


def accumulator_for(class_names: Sequence[str], things: Sequence[int], output: OutputSpec
                    ) -> MetricsAccumulator | MultiLabelAccumulator:
    """The accumulator that scores a model with ``output``: per-class planes for multi-label ones."""
    thresholds = thresholds_of(output, len(class_names))
    if thresholds is not None:
        return MultiLabelAccumulator(class_names, things, thresholds)
    return MetricsAccumulator(class_names, things, output)


@torch.no_grad()
def evaluate_chips(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   accumulator: MetricsAccumulator | MultiLabelAccumulator, *, device: torch.device, batch_size: int,
                   amp: bool) -> Metrics:
    """Score ``model`` on normalised chips ``images`` ``(N, C, *chip)`` against ``labels`` ``(N, [K,] *chip)``.

    The model is put in eval mode; predictions are the accumulator's labels of the logits (the
    arg-max for softmax models, see :func:`accumulator_for`).
    """
    model.eval()
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
            logits = model(x)
        pred = accumulator.predict(logits)
        truth = labels[i : i + batch_size].numpy()
        for p, t in zip(pred, truth, strict=True):
            accumulator.update(p, t)
    return accumulator.result()


def evaluate_sliding_window(module: nn.Module, spec: ModelSpec, sources: Sequence[ChipSource], *,
                            device: str = "auto", batch_size: int = 8, chunk: int = 2048) -> Metrics:
    """Score a model package on whole sources, window by window as ``tile-infer`` runs it.

    Parameters
    ----------
    module : nn.Module
        The package's network (raw image in, logits out after the package's normalisation).
    spec : ModelSpec
        The package's contract: normalisation, tile, overlap, classes.
    sources : sequence of ChipSource
        Scenes ``(Y, X)`` or volumes ``(Z, Y, X)`` with truth; read lazily by chunks.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    batch_size : int
        Windows per forward pass.
    chunk : int
        Processing chunk side in pixels; no result depends on it (objects are whole across chunk
        seams: :class:`~segflow.training.object_scores.SourceObjects`).

    Returns
    -------
    Metrics
        Counted over every labelled pixel of every source; a labelled pixel the windows leave without
        a prediction counts as a miss of its class (as ``segflow eval`` counts it).
    """
    predictor = Predictor(module, spec, device=device, batch_size=batch_size)
    things = [k for k, c in enumerate(spec.classes) if c.kind == "thing"]
    accumulator = accumulator_for(spec.class_names, (), spec.output)  # objects: whole sources, below
    objects = {k: ObjectScore.from_counts(0, 0, 0) for k in things}
    for source in sources:
        scene = source_scene(source, chunk=chunk)
        grid = WindowGrid.create(scene.spatial_shape, spec.tile_shape, spec.overlap)
        chunks = ChunkGrid.create(scene.spatial_shape, chunk)
        with SourceObjects(scene.spatial_shape, chunks.chunk, things, multilabel=spec.multilabel) as found:
            for blended in blend_chunks(scene, grid, chunks, predictor, "gaussian", len(spec.classes),
                                        device=predictor.device, thresholds=spec.thresholds):
                truth = source.read(blended.box.start, blended.box.shape).labels
                pred = np.where(blended.valid, blended.labels, IGNORE).astype(np.uint8)  # uncovered: no prediction
                accumulator.update(pred, truth)
                found.add(blended.box, pred, truth)
            for k, score in found.scores().items():
                objects[k] = objects[k] + score
    accumulator.things, accumulator.objects = tuple(things), objects
    return accumulator.result()
