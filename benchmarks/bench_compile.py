"""torch.compile against the CPU predictor's usual network (traced, frozen, channels-last): forward time per batch.

Two eager networks: MONAI's UNet(channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2)) at 8 × 3 × 256², and
segflow's demo-unet-2d (the built-in package) at 8 × 4 × 256². Each is timed frozen (what the Predictor runs
without --compile) and compiled (inductor, channels-last, what --compile runs), after warm-up, best of
``--repeats`` runs of 10 batches; the first compiled call's time (compilation, with inductor's on-disk
cache as this machine has it) is reported apart.

Usage: python benchmarks/bench_compile.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

from segflow.models import load_module, resolve_package

HERE = Path(__file__).resolve().parent


def _per_batch(f: object, x: torch.Tensor, repeats: int, n: int = 10) -> float:
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(n):
                f(x)  # type: ignore[operator]
            best = min(best, (time.perf_counter() - t) / n)
    return best


def measure(net: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    net = net.eval().to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = torch.jit.freeze(torch.jit.trace(net, xc[:1], check_trace=False).eval())
        frozen(xc)
        frozen(xc)
        compiled = torch.compile(net, dynamic=False)
        t = time.perf_counter()
        compiled(xc)
        first = time.perf_counter() - t
        compiled(xc)
    f, c = _per_batch(frozen, xc, repeats), _per_batch(compiled, xc, repeats)
    return {"frozen_s": round(f, 4), "compiled_s": round(c, 4), "speedup": round(f / c, 3),
            "first_compiled_call_s": round(first, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    light = UNet(spatial_dims=2, in_channels=3, out_channels=4, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2))
    demo = load_module(resolve_package("demo-unet-2d"))
    results = {
        "machine": f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "monai_unet_16_256_batch8_256": measure(light, torch.rand(8, 3, 256, 256), args.repeats),
        "demo_unet_2d_batch8_256": measure(demo, torch.rand(8, 4, 256, 256), args.repeats),
    }
    print(json.dumps(results, indent=2))
    (HERE / "results" / "compile-cpu.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
