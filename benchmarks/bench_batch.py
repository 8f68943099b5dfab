"""The nightly batch: what Prefect and the batch layer add over plain tile-infer runs, and what a night with
nothing new costs.

An inbox of N synthetic 4-band rasters (``--size``², the built-in ``spectral-landcover``) is processed
four ways, each in a fresh process: (0) ``segflow batch`` on an empty inbox (what every night costs
before its first item: the temporary Prefect server, the flow, an empty report); (1) plain
``tile_infer`` calls, one per item, into one output folder each (the floor); (2) ``segflow batch`` (the
Prefect flow in a temporary local server, polygons as a batch writes them, reports); (3) ``segflow
batch`` again on the same inbox and output (every item unchanged).
Printed and written to results/batch-cpu.json: each wall time, the first night ÷ plain runs (with and
without the fixed cost of (0)), and the second night's time per item beyond that fixed cost.

Usage: python benchmarks/bench_batch.py [--items 12] [--size 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "batch"
SEGFLOW = Path(sys.executable).with_name("segflow")


def plain_runs(inbox: Path, out: Path) -> float:
    code = ("import sys,time,pathlib;from segflow.tile_infer import tile_infer, TileInferParams;"
            "t=time.perf_counter();"
            "[tile_infer(str(p), sys.argv[2] + '/' + p.name, TileInferParams(vectorize='gpkg', scene_id=p.name)) "
            "for p in sorted(pathlib.Path(sys.argv[1]).glob('*.tif'))];"
            "print(time.perf_counter()-t)")
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-c", code, str(inbox), str(out)], capture_output=True, text=True,
                          check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def night(inbox: Path, out: Path) -> float:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    t = time.perf_counter()
    subprocess.run([str(SEGFLOW), "batch", "--inbox", str(inbox), "--output", str(out), "--quiet"], env=env,
                   check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    from segflow.synthetic import write_synthetic_scene

    inbox = WORK / f"inbox-{args.items}x{args.size}"
    if not inbox.exists():
        inbox.mkdir(parents=True)
        for k in range(args.items):
            write_synthetic_scene(inbox / f"scene{k:02d}.tif", width=args.size, height=args.size, seed=k)
    plain = plain_runs(inbox, WORK / "plain")
    shutil.rmtree(WORK / "out", ignore_errors=True)
    empty = WORK / "empty-inbox"
    empty.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(WORK / "out-empty", ignore_errors=True)
    fixed = night(empty, WORK / "out-empty")  # the temporary Prefect server, the flow, an empty report
    first = night(inbox, WORK / "out")
    second = night(inbox, WORK / "out")
    report = json.loads((WORK / "out" / "report.json").read_text())
    assert report["counts"] == {"unchanged": args.items}, report["counts"]
    results = {
        "items": args.items, "size": args.size, "model": "spectral-landcover",
        "plain_tile_infer_s": round(plain, 2), "empty_night_s": round(fixed, 2), "first_night_s": round(first, 2),
        "second_night_s": round(second, 2),
        "ratios": {"first_night_over_plain_runs": round(first / plain, 3),
                   "first_night_less_empty_night_over_plain_runs": round((first - fixed) / plain, 3),
                   "second_night_less_empty_night_s_per_item": round((second - fixed) / args.items, 3)},
    }
    print(json.dumps(results, indent=2))
    (HERE / "results" / "batch-cpu.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
