"""The built-in demo: a synthetic scene, tile-infer over it, and IoU against its ground truth."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .evaluate import evaluate
from .synthetic import write_synthetic_scene
from .tile_infer import TileInferParams, tile_infer

__all__ = ["DEMO_MODEL", "run_demo"]

DEMO_MODEL = "demo-unet-2d"


def run_demo(output_dir: str | Path, *, size: int = 2048, model: str | None = None, seed: int = 2026,
             progress: Callable[[int, int], None] | None = None) -> str:
    """Generate a scene, segment it, and return a short report with per-class IoU against its truth."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    scene = write_synthetic_scene(out / "scene.tif", width=size, height=size, seed=seed,
                                  truth_path=out / "truth.tif")
    result = tile_infer(scene.path, out / "result", TileInferParams(model=model or DEMO_MODEL), progress=progress)
    report = evaluate(result.outputs["labels.tif"], out / "truth.tif")
    ious = ", ".join(f"{row.name} {row.iou:.3f}" for row in report.rows)
    return (f"{result.summary()}\n"
            f"scene: {scene.path} (truth: {scene.truth_path})\n"
            f"IoU against truth: {ious} | mean IoU {report.mean_iou:.3f}")
