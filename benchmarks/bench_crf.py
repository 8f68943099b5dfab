"""Dense CRF benchmark: accuracy gained on noisy probabilities, time per megapixel, memory of a 2048² chunk.

1. accuracy: a synthetic scene (``segflow.synthetic.synthesize_block``: blue/green/red/nir reflectance and its
   4-class truth), bands scaled by ``band_scaling`` of the scene (2nd..98th percentile → 0..1). Noisy class
   probabilities are made from the truth: ``softmax(4 · gaussian_blur(one_hot(truth), 2 px) + s · n)``, ``n``
   per-class Gaussian noise blurred by 1 px and scaled to unit variance, ``s`` the noise level (blurred
   boundaries and speckle blobs, the errors a network makes). Mean IoU, pixel accuracy and boundary accuracy
   (pixels within 2 px, Euclidean, of a pixel whose 4-neighbour has another truth class) of the arg-max
   before and after the CRF, for the default ``CRFParams`` and two ablations (smoothness kernel only,
   appearance kernel only);
2. time: ``dense_crf`` over the whole scene, and ``crf_chunked`` (chunk + halo per chunk, the pipeline's
   per-chunk reference) in wall and CPU seconds per megapixel (the fastest of ``--repeats``; CPU seconds
   are what other processes on a shared machine do not inflate); the chunked result is checked equal to
   the whole one;
3. memory: peak resident memory added by ``dense_crf`` on a 2048² chunk with 4 bands, K = 4, radius 5, in a
   fresh process (VmHWM after minus before the call, inputs allocated before).

Writes results/crf-<device>.json (--quick: _work/crf/crf-quick.json) and prints a summary.
Usage: python benchmarks/bench_crf.py [--size 2048] [--chunk 512] [--seed 3] [--device auto] [--threads 1]
       [--repeats 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from segflow.crf import CRFParams, band_scaling, crf_chunked, dense_crf, halo
from segflow.metrics import ConfusionMatrix
from segflow.predict import resolve_device
from segflow.synthetic import CLASSES, synthesize_block

HERE = Path(__file__).resolve().parent
NOISE_LEVELS = (1.2, 2.0)
VARIANTS: dict[str, dict[str, Any]] = {"default": {}, "smoothness_only": {"bilateral_weight": 0.0},
                                       "appearance_only": {"spatial_weight": 0.0}}


def machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "device": str(device), "torch": torch.__version__, "python": platform.python_version()}


def noisy_probs(truth: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """``(K, H, W)`` float32 probabilities: blurred one-hot truth plus blurred per-class Gaussian noise."""
    rng = np.random.default_rng(seed)
    classes = range(len(CLASSES))
    logits = np.stack([4.0 * ndimage.gaussian_filter((truth == k).astype(np.float32), 2.0) for k in classes])
    n = np.stack([ndimage.gaussian_filter(rng.normal(size=truth.shape), 1.0) for _ in classes])
    logits += noise * n / n.std()
    p = np.exp(logits - logits.max(0))
    return (p / p.sum(0)).astype(np.float32)


def boundary_band(truth: np.ndarray, width: float = 2.0) -> np.ndarray:
    """Pixels within ``width`` px (Euclidean) of a pixel with a 4-neighbour of another class."""
    edge = np.zeros(truth.shape, dtype=bool)
    dy, dx = truth[1:] != truth[:-1], truth[:, 1:] != truth[:, :-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    return ndimage.distance_transform_edt(~edge) <= width


def scores(pred: np.ndarray, truth: np.ndarray, band: np.ndarray) -> dict[str, Any]:
    cm = ConfusionMatrix(len(CLASSES))
    cm.update(pred, truth)
    return {"mean_iou": round(cm.mean_iou(), 4), "iou": [round(float(v), 4) for v in cm.iou()],
            "pixel_accuracy": round(cm.pixel_accuracy(), 4),
            "boundary_accuracy": round(float((pred == truth)[band].mean()), 4)}


def timed(fn: Any, device: torch.device) -> tuple[Any, float, float]:
    """``fn()``, its wall seconds and this process's CPU seconds (all threads; unaffected by other processes)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t, time.process_time() - c


def memory_worker(size: int, device: str) -> dict[str, Any]:
    """Peak memory added by dense_crf on a ``size``² chunk, 4 bands, K = 4, default params (radius 5)."""
    dev = resolve_device(device)
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((4, size, size), dtype=np.float32)).to(dev)
    probs = torch.from_numpy(rng.dirichlet(np.ones(4), size=(size, size)).transpose(2, 0, 1).astype(np.float32)).to(dev)

    def hwm() -> int:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) * 1024

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        dense_crf(image, probs, CRFParams())
        added = torch.cuda.max_memory_allocated(dev) - base
        return {"size": size, "peak_added_mb": round(added / 2**20), "kind": "cuda max_memory_allocated"}
    before = hwm()
    dense_crf(image, probs, CRFParams())
    return {"size": size, "peak_added_mb": round((hwm() - before) / 2**20), "kind": "VmHWM"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: per-core figures, steady on a "
                    "shared machine)")
    ap.add_argument("--repeats", type=int, default=2, help="timing repeats; the fastest is reported")
    ap.add_argument("--quick", action="store_true", help="512² scene, 1024² memory chunk, results under _work/")
    ap.add_argument("--memory-worker", nargs=2, metavar=("SIZE", "DEVICE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_worker:
        torch.set_num_threads(args.threads)
        print(json.dumps(memory_worker(int(args.memory_worker[0]), args.memory_worker[1])))
        return
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    size = 512 if args.quick else args.size
    image, truth = synthesize_block(0, 0, size, size, seed=args.seed)
    feat = band_scaling(image).apply(image)
    band = boundary_band(truth)
    params = CRFParams()
    t_feat = torch.from_numpy(feat).to(device)
    accuracy: dict[str, Any] = {}
    for noise in NOISE_LEVELS:
        probs = noisy_probs(truth, noise, args.seed)
        t_probs = torch.from_numpy(probs).to(device)
        row: dict[str, Any] = {"before": scores(probs.argmax(0), truth, band)}
        for name, change in VARIANTS.items():
            out = dense_crf(t_feat, t_probs, replace(params, **change)).cpu().numpy()
            row[name] = scores(out.argmax(0), truth, band)
        accuracy[f"noise_{noise}"] = row
    probs = noisy_probs(truth, NOISE_LEVELS[0], args.seed)
    t_probs = torch.from_numpy(probs).to(device)
    mp = size * size / 1e6
    runs: dict[str, list[tuple[float, float]]] = {"whole": [], "chunked": []}
    load = [round(v, 2) for v in os.getloadavg()]
    for _ in range(args.repeats):
        whole_t, wall, cpu = timed(lambda: dense_crf(t_feat, t_probs, params), device)
        runs["whole"].append((wall / mp, cpu / mp))
        chunked, wall, cpu = timed(lambda: crf_chunked(feat, probs, args.chunk, params, device), device)
        runs["chunked"].append((wall / mp, cpu / mp))
    whole = whole_t.cpu().numpy()
    timing: dict[str, Any] = {"load_average_before": load, "load_average_after": [round(v, 2) for v in os.getloadavg()]}
    for key, values in runs.items():
        timing[f"{key}_s_per_mp"] = round(min(w for w, _ in values), 3)
        timing[f"{key}_cpu_s_per_mp"] = round(min(c for _, c in values), 3)
        timing[f"all_{key}_wall_cpu_s_per_mp"] = [[round(w, 3), round(c, 3)] for w, c in values]
    timing |= {"chunk": args.chunk, "halo": halo(params),
               "chunked_max_abs_diff_vs_whole": float(np.abs(chunked - whole).max()),
               "chunked_bitwise_equal_whole": bool(np.array_equal(chunked, whole))}
    mem_size = 1024 if args.quick else 2048
    worker = ["--threads", str(args.threads), "--memory-worker", str(mem_size), str(device)]
    proc = subprocess.run([sys.executable, __file__, *worker], capture_output=True, text=True, check=True)
    memory = json.loads(proc.stdout.strip().splitlines()[-1])
    result = {"machine": machine(device),
              "settings": {"size": size, "seed": args.seed, "repeats": args.repeats,
                           "bands": "blue, green, red, nir scaled by band_scaling",
                           "noise_levels": NOISE_LEVELS, "params": asdict(params), "variants": VARIANTS,
                           "boundary_band_px": 2.0, "boundary_band_fraction": round(float(band.mean()), 4)},
              "accuracy": accuracy, "time": timing, "memory": memory}
    out_path = HERE / "_work" / "crf" / "crf-quick.json" if args.quick else HERE / "results" / f"crf-{device.type}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{size}² scene on {device} ({torch.get_num_threads()} torch threads), params {asdict(params)}")
    for key, row in accuracy.items():
        for name, s in row.items():
            print(f"  {key:10s} {name:16s} mIoU {s['mean_iou']:.4f}  pixel acc {s['pixel_accuracy']:.4f}  "
                  f"boundary acc {s['boundary_accuracy']:.4f}")
    t = timing
    print(f"  time (wall / CPU): whole {t['whole_s_per_mp']} / {t['whole_cpu_s_per_mp']} s/MP, chunked ({args.chunk}, "
          f"halo {t['halo']}) {t['chunked_s_per_mp']} / {t['chunked_cpu_s_per_mp']} s/MP; load average "
          f"{t['load_average_before']}; chunked == whole bitwise: {t['chunked_bitwise_equal_whole']}")
    print(f"  memory: dense_crf on a {memory['size']}² chunk (C=4, K=4, r=5) adds {memory['peak_added_mb']} MB peak")
    print(f"  written {out_path}")


if __name__ == "__main__":
    main()
