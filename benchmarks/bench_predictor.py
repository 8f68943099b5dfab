"""Predictor benchmark: reduced precision and test-time augmentation on the built-in demo models.

For each trained demo model (``demo-unet-2d`` on synthetic scenes from :mod:`segflow.synthetic`,
``demo-unet-3d`` on synthetic volumes from :mod:`segflow.synthetic.volume`; the seeds are the
held-out test seeds of their model cards; ``spectral-landcover`` has no network, only rules on
spectral indices, so it has nothing to measure) the inputs are cut into the model's windows
(its tile and overlap), each configuration runs them through :class:`segflow.predict.Predictor`
exactly as the pipeline does (normalisation, the CPU's traced and frozen channels-last
network, probabilities in float32), and the probabilities are blended with Gaussian weights
into labels. Reported, each figure measured in this one run:

- ``speedup``     = forward time fp32 / forward time bf16 (the same windows, same batches);
- ``agreement``   = fraction of pixels whose blended arg-max label is the same in bf16 and fp32
                    (issue 12 asks >= 99.9 % before a package declares bf16);
- ``tta_cost``    = forward time with ``tta="flips"`` / without (fp32);
- ``miou``        = mean IoU against the synthetic truth: fp32, bf16, fp32 with flips.

Forward times are the fastest of ``--repeats`` passes over all windows, the configurations
interleaved, each predictor warmed up first (its first and last batch twice: the first batch
traces the network, TorchScript specialises each batch shape on its first runs).
On a CPU without native bf16 (no ``avx512_bf16`` / ``amx_bf16`` flag) segflow refuses bf16;
this script then lets PyTorch emulate it to measure the agreement and records
``bf16_native: false`` — the speed-up it prints is the emulation's, not native bf16's.

Usage: python benchmarks/bench_predictor.py [--repeats 2] [--threads N]
Writes benchmarks/results/predictor-cpu.json and prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import segflow.precision as precision_module
from segflow.metrics import ConfusionMatrix
from segflow.models import load_module, resolve_package
from segflow.predict import Predictor
from segflow.stitch import weights_tensor
from segflow.synthetic import synthesize_block
from segflow.synthetic.volume import synthesize_volume
from segflow.tiling import WindowGrid

HERE = Path(__file__).resolve().parent
CONFIGS = {"fp32": ("fp32", "none"), "bf16": ("bf16", "none"), "fp32+flips": ("fp32", "flips")}


@dataclass(frozen=True)
class Case:
    model: str
    batch: int
    inputs: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # (C, *spatial) image, (*spatial) truth
    described: str


def scenes(size: int = 1024, seeds: tuple[int, ...] = (2026, 2027)) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for seed in seeds:
        image, truth = synthesize_block(0, 0, size, size, seed=seed)
        yield image.astype(np.float32), truth


def volumes(size: int = 96, seeds: tuple[int, ...] = (2026, 2027, 2028)) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for seed in seeds:
        image, truth = synthesize_volume(size, seed=seed)
        yield image[None].astype(np.float32), truth


CASES = [
    Case("demo-unet-2d", 8, scenes, "2 synthetic scenes 1024x1024, 4 bands (seeds 2026-2027)"),
    Case("demo-unet-3d", 4, volumes, "3 synthetic volumes 96x96x96 (seeds 2026-2028)"),
]


def windows_of(image: np.ndarray, tile: tuple[int, ...], overlap: float) -> tuple[WindowGrid, list[Any]]:
    grid = WindowGrid.create(image.shape[1:], tile, overlap)
    return grid, [grid.window(i) for i in itertools.product(*(range(c) for c in grid.counts))]


def forward(predictor: Predictor, batches: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
    """Seconds for all batches (the result ends on the host, so the time covers the whole forward)."""
    t0 = time.perf_counter()
    out = [predictor.predict_batch(b) for b in batches]
    return time.perf_counter() - t0, out


def blend(shape: tuple[int, ...], boxes: list[Any], probs: np.ndarray, tile: tuple[int, ...]) -> np.ndarray:
    """Labels from Gaussian-weighted probabilities ``(windows, K, *tile)``, as the engine blends them."""
    w = weights_tensor(tile, "gaussian").numpy()
    acc = np.zeros((probs.shape[1], *shape), dtype=np.float32)
    for box, p in zip(boxes, probs, strict=True):
        acc[(slice(None), *box.slices)] += p * w
    return acc.argmax(0)


def run_case(case: Case, repeats: int) -> dict[str, Any]:
    package = resolve_package(case.model)
    spec = package.spec
    inputs = list(case.inputs())
    cut = [windows_of(image, spec.tile_shape, spec.overlap) for image, _ in inputs]
    stacked = np.concatenate([np.stack([image[(slice(None), *b.slices)] for b in boxes])
                              for (image, _), (_, boxes) in zip(inputs, cut, strict=True)])
    batches = [stacked[i : i + case.batch] for i in range(0, len(stacked), case.batch)]
    predictors = {}
    for name, (precision, tta) in CONFIGS.items():
        p = Predictor(load_module(package), spec, device="cpu", batch_size=case.batch, precision=precision, tta=tta,
                      warn=False)
        for batch in (batches[0], batches[-1]) * 2:  # traces and freezes the network; the JIT's profiling
            p.predict_batch(batch)                   # executor specialises each batch shape on its first runs
        predictors[name] = p
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    outputs: dict[str, list[np.ndarray]] = {}
    for _ in range(repeats):
        for name, p in predictors.items():
            seconds, out = forward(p, batches)
            times[name].append(seconds)
            outputs[name] = out
    labels: dict[str, list[np.ndarray]] = {}
    miou: dict[str, float] = {}
    for name, out in outputs.items():
        probs, start, labels[name] = np.concatenate(out), 0, []
        matrix = ConfusionMatrix(len(spec.classes))
        for (image, truth), (_, boxes) in zip(inputs, cut, strict=True):
            lab = blend(image.shape[1:], boxes, probs[start : start + len(boxes)], spec.tile_shape)
            start += len(boxes)
            labels[name].append(lab)
            matrix.update(lab, truth)
        miou[name] = matrix.mean_iou()
    same = sum(int((a == b).sum()) for a, b in zip(labels["fp32"], labels["bf16"], strict=True))
    pixels = sum(a.size for a in labels["fp32"])
    best = {name: min(t) for name, t in times.items()}
    return {
        "model": case.model, "inputs": case.described, "tile": list(spec.tile_shape), "overlap": spec.overlap,
        "batch": case.batch, "windows": len(stacked), "pixels": pixels,
        "optimised": {name: type(p.module).__name__ for name, p in predictors.items()},
        "seconds": {name: [round(t, 3) for t in ts] for name, ts in times.items()},
        "speedup_bf16": round(best["fp32"] / best["bf16"], 3),
        "agreement_bf16": same / pixels,
        "tta_cost": round(best["fp32+flips"] / best["fp32"], 3),
        "miou": {name: round(v, 5) for name, v in miou.items()},
    }


def machine(native: bool) -> dict[str, Any]:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
               platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_native": native,
            "bf16_note": None if native else ("no avx512_bf16 / amx_bf16 flag: segflow refuses --precision bf16 "
                                              "here; bf16 was emulated by PyTorch to measure the agreement, so "
                                              "its speed-up is the emulation's"),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def busy() -> list[str]:
    """The processes using the most CPU (averaged over their lifetime, as ps reports; the 2 cores are shared)."""
    ps = subprocess.run(["ps", "-eo", "pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True)
    return [" ".join(line.split())[:160] for line in ps.stdout.splitlines()[1:6]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    native = precision_module.cpu_has_native_bf16()
    if not native:
        precision_module.cpu_has_native_bf16 = lambda *a, **k: True  # emulated by PyTorch
    load_before, busy_before = os.getloadavg(), busy()
    t0 = time.perf_counter()
    results = [run_case(case, args.repeats) for case in CASES]
    record = {"machine": machine(native), "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "busiest_processes_before": busy_before, "busiest_processes_after": busy(),
              "wall_seconds": round(time.perf_counter() - t0, 1),
              "no_network": {"spectral-landcover": "rules on spectral indices, no network: nothing to measure"},
              "models": results}
    out = HERE / "results" / "predictor-cpu.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{'model':14} {'fp32 s':>7} {'bf16 s':>7} {'speed-up':>8} {'agree':>8} {'flips s':>8} {'tta cost':>8} "
          f"{'mIoU fp32':>9} {'bf16':>7} {'flips':>7}")
    for r in results:
        s = {k: min(v) for k, v in r["seconds"].items()}
        print(f"{r['model']:14} {s['fp32']:7.2f} {s['bf16']:7.2f} {r['speedup_bf16']:8.3f} "
              f"{100 * r['agreement_bf16']:7.3f}% {s['fp32+flips']:8.2f} {r['tta_cost']:8.3f} "
              f"{r['miou']['fp32']:9.4f} {r['miou']['bf16']:7.4f} {r['miou']['fp32+flips']:7.4f}")
    print(f"bf16 native: {native}" + ("" if native else " (emulated: speed-up is not native bf16's)"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
