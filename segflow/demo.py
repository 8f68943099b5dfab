"""The built-in demo: a synthetic scene, tile-infer over it, and IoU against its ground truth."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from .metrics import ConfusionMatrix
from .synthetic import CLASSES, TRUTH_NODATA, write_synthetic_scene
from .tile_infer import DEFAULT_MODEL, TileInferParams, tile_infer

__all__ = ["evaluate_against_truth", "run_demo"]


def evaluate_against_truth(labels_path: Path, truth_path: Path, class_names: list[str],
                           truth_names: tuple[str, ...] = CLASSES, block: int = 2048) -> ConfusionMatrix:
    """Confusion matrix of predicted labels against truth, read block by block.

    Truth classes the model does not know are counted as the model's class 0; nodata in
    either raster is ignored.
    """
    to_model = np.array([class_names.index(n) if n in class_names else 0 for n in truth_names]
                        + [0] * (256 - len(truth_names)), dtype=np.uint8)
    cm = ConfusionMatrix(len(class_names), ignore_index=255)
    with rasterio.open(labels_path) as pred_ds, rasterio.open(truth_path) as truth_ds:
        for row in range(0, pred_ds.height, block):
            for col in range(0, pred_ds.width, block):
                window = Window(col, row, min(block, pred_ds.width - col), min(block, pred_ds.height - row))
                pred = pred_ds.read(1, window=window)
                truth = truth_ds.read(1, window=window)
                mapped = to_model[truth]
                ignore = (truth == TRUTH_NODATA) | (pred == 255)
                mapped[ignore] = 255
                pred = np.where(ignore, 255, pred).astype(np.uint8)
                cm.update(pred, mapped)
    return cm


def run_demo(output_dir: str | Path, *, size: int = 2048, model: str | None = None, seed: int = 2026,
             progress: Callable[[int, int], None] | None = None) -> str:
    """Generate a scene, segment it, and return a short report with per-class IoU."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    scene = write_synthetic_scene(out / "scene.tif", width=size, height=size, seed=seed,
                                  truth_path=out / "truth.tif")
    result = tile_infer(scene.path, out / "result", TileInferParams(model=model or DEFAULT_MODEL),
                        progress=progress)
    with rasterio.open(result.outputs["labels.tif"]) as ds:
        names = ds.tags()["class_names"].split(",")
    cm = evaluate_against_truth(result.outputs["labels.tif"], out / "truth.tif", names)
    ious = ", ".join(f"{n} {v:.3f}" for n, v in zip(names, cm.iou(), strict=True))
    return (f"{result.summary()}\n"
            f"scene: {scene.path} (truth: {scene.truth_path})\n"
            f"IoU against truth: {ious} | mean IoU {cm.mean_iou():.3f}")
