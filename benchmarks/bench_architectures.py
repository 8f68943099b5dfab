"""Forward throughput of every 2D architecture at tile 512, batch 8, in megapixels per second.

Each architecture is built with its defaults (4 input bands, 4 classes), run in eval mode under
``torch.inference_mode``, both as it is (eager) and as segflow's predictor runs it on the CPU
(traced, frozen, optimised for inference). Figures: the median of ``--repeats`` timed batches
after two warm-up batches. Usage: python benchmarks/bench_architectures.py [--device cpu]
[--only NAME ...]. A full run writes ``results/architectures-<device>.json``; a run of ``--only``
some architectures writes ``results/architectures-<device>-partial.json`` and leaves the full
results alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch

from segflow.models.arch import architecture_info, architecture_names, build_architecture

HERE = Path(__file__).resolve().parent
TILE, BATCH, BANDS, CLASSES = 512, 8, 4, 4


def megapixels_per_second(module: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            if x.is_cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            module(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t)
    return BATCH * TILE * TILE / 1e6 / statistics.median(times)


def optimised(module: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(module, x[:1])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="measure only these architectures")
    args = parser.parse_args()
    names = [n for n in architecture_names() if 2 in architecture_info(n).spatial_dims]
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"--only {unknown[0]!r} is not a 2D architecture; choose from {', '.join(names)}")
        names = [n for n in names if n in args.only]
    device = torch.device(args.device)
    x = torch.rand(BATCH, BANDS, TILE, TILE, device=device)
    rows = []
    for name in names:
        torch.manual_seed(0)
        net = build_architecture(name, spatial_dims=2, in_channels=BANDS, out_channels=CLASSES).eval().to(device)
        params = sum(p.numel() for p in net.parameters())
        eager = megapixels_per_second(net, x, args.repeats)
        fast = megapixels_per_second(optimised(net, x), x, args.repeats) if device.type == "cpu" else None
        rows.append({"architecture": name, "parameters": params, "eager_mp_s": round(eager, 2),
                     "optimised_mp_s": None if fast is None else round(fast, 2)})
        print(f"{name:14s} {params / 1e6:5.2f} M params  eager {eager:7.2f} MP/s"
              + ("" if fast is None else f"  optimised {fast:7.2f} MP/s"), flush=True)
    out = {"device": str(device), "tile": TILE, "batch": BATCH, "threads": torch.get_num_threads(),
           "torch": torch.__version__, "results": rows}
    suffix = "-partial" if args.only else ""
    target = HERE / "results" / f"architectures-{device.type}{suffix}.json"
    target.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
