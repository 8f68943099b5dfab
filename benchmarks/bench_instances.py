"""Instance segmentation on fresh synthetic scenes: Mask R-CNN against a semantic UNet (+ watershed).

Scenes come from ``segflow.synthetic`` with seeds never used in training (buildings in touching pairs
included); the truth instances are :func:`segflow.synthetic.synthesize_instances`. Each method runs as a
user runs it, ``segflow run tile-infer`` on the GeoTIFF:

- ``maskrcnn``: an instance package (default ``demo-maskrcnn-2d``): the run's ``instances`` ids, scored by
  their detection scores;
- ``unet``: ``demo-unet-2d``; its building pixels' connected components, scored by their mean building
  probability (``--save-scores``);
- ``unet+watershed``: the same run with ``--vectorize --separate watershed``: the split objects
  (``mask.zarr/separated``), scored alike.

Per method, over all scenes: object precision / recall / F1 at mask IoU >= 0.5 and COCO mask AP@[.5:.95]
(:mod:`segflow.instance_metrics`, every object of a scene ranked, no 100-detection cap), the same for the
truth objects that touch another one (recall of touching buildings), and throughput in megapixels per
second of the whole run (``run.json`` wall time). Prints a table; ``--output`` writes the JSON.

    python benchmarks/bench_instances.py --size 1024 --scenes 2 --output benchmarks/results/instances-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from scipy import ndimage

from segflow.features import VectorOptions
from segflow.instance_metrics import MaskAP, match_instances
from segflow.synthetic import synthesize_instances, write_synthetic_scene
from segflow.tile_infer import TileInferParams, tile_infer

BUILDING = 3  # in the synthetic truth and demo-unet-2d


def _touching(truth: np.ndarray) -> np.ndarray:
    """Ids of truth objects that share an edge with another object."""
    right = (truth[:, :-1] != truth[:, 1:]) & (truth[:, :-1] > 0) & (truth[:, 1:] > 0)
    down = (truth[:-1] != truth[1:]) & (truth[:-1] > 0) & (truth[1:] > 0)
    ids = np.concatenate([truth[:, :-1][right], truth[:, 1:][right], truth[:-1][down], truth[1:][down]])
    return np.unique(ids)


def _mean_per_object(ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relabelled ids (1..M in order of id) and each object's mean of ``values``."""
    present = np.unique(ids[ids > 0])
    lookup = np.zeros(int(ids.max()) + 1 if ids.size else 1, np.int64)
    lookup[present] = np.arange(1, len(present) + 1)
    dense = lookup[ids]
    means = ndimage.mean(values, dense, index=np.arange(1, len(present) + 1)) if len(present) else np.zeros(0)
    return dense, np.asarray(means, dtype=np.float64)


def _run(image: Path, out: Path, params: TileInferParams) -> tuple[zarr.Group, float]:
    tile_infer(image, out, params)
    wall = json.loads((out / "run.json").read_text())["wall_seconds"]
    return zarr.open_group(out / "mask.zarr", mode="r"), float(wall)


def _methods(image: Path, work: Path, package: str) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Per method: instance ids (dense), their scores, and the run's wall seconds."""
    store, wall = _run(image, work / "maskrcnn", TileInferParams(model=package))
    ids = np.asarray(store["instances"][...]).astype(np.int64)
    found = {"maskrcnn": (ids, np.asarray(store["instance_scores"][...], np.float64), wall)}
    store, wall = _run(image, work / "unet", TileInferParams(model="demo-unet-2d", save_scores=True))
    labels = np.asarray(store["labels"][...])
    prob = np.asarray(store["scores"][BUILDING], dtype=np.float32)
    components, _ = ndimage.label(labels == BUILDING)
    found["unet"] = (*_mean_per_object(components, prob), wall)
    store, wall = _run(image, work / "watershed", TileInferParams(
        model="demo-unet-2d", save_scores=True, vectorize="gpkg", vector_options=VectorOptions(separate="watershed")))
    separated = np.asarray(store["separated"][...]).astype(np.int64)
    found["unet+watershed"] = (*_mean_per_object(separated, np.asarray(store["scores"][BUILDING], np.float32)),
                               wall)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="scene width and height in pixels")
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=4242, help="first scene seed (never one used in training)")
    parser.add_argument("--model", default="demo-maskrcnn-2d", help="the instance package")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    totals: dict[str, dict[str, Any]] = {}
    for n in range(args.scenes):
        seed = args.seed + n
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            scene = write_synthetic_scene(work / "scene.tif", width=args.size, height=args.size, seed=seed)
            truth = synthesize_instances(0, 0, args.size, args.size, seed=seed)
            touching = _touching(truth)
            for name, (ids, scores, wall) in _methods(scene.path, work, args.model).items():
                t = totals.setdefault(name, {"ap": MaskAP(max_detections=10**9), "tp": 0, "fp": 0, "fn": 0,
                                             "touching": 0, "touching_found": 0, "seconds": 0.0, "pixels": 0,
                                             "objects": 0})
                t["ap"].add(ids, scores, truth)
                matches = match_instances(ids, scores, truth, iou=0.5)
                t["tp"] += matches.tp
                t["fp"] += matches.fp
                t["fn"] += matches.fn
                found_truth = np.unique(truth[truth > 0])[matches.matched[matches.matched >= 0]]
                t["touching"] += len(touching)
                t["touching_found"] += int(np.isin(touching, found_truth).sum())
                t["seconds"] += wall
                t["pixels"] += args.size * args.size
                t["objects"] += len(scores)
    rows = {}
    for name, t in totals.items():
        tp, fp, fn = t["tp"], t["fp"], t["fn"]
        rows[name] = {"precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
                      "f1": 2 * tp / max(2 * tp + fp + fn, 1), "mask_ap": t["ap"].value(),
                      "touching_recall": t["touching_found"] / max(t["touching"], 1),
                      "objects": t["objects"], "truth_objects": tp + fn, "touching_truth_objects": t["touching"],
                      "megapixels_per_second": t["pixels"] / 1e6 / t["seconds"]}
    print("| method | precision | recall | F1 | mask AP@[.5:.95] | recall of touching | MP/s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['mask_ap']:.3f} | "
              f"{r['touching_recall']:.3f} | {r['megapixels_per_second']:.2f} |")
    if args.output:
        record = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "size": args.size, "scenes": args.scenes,
                  "seeds": [args.seed + n for n in range(args.scenes)], "model": args.model,
                  "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                              "torch": torch.__version__, "threads": torch.get_num_threads()},
                  "results": rows}
        args.output.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
