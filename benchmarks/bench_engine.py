"""Engine benchmark: threads vs worker processes, scheduler cost per chunk task, bytes moved, worker memory.

1. throughput: a synthetic blue/green/red/nir uint16 scene through tile-infer on threads (``Execution()``),
   ``Execution(workers=1)``, ``Execution(workers=2)`` (cluster start included) and a 2-worker LocalCluster
   started beforehand (``Execution(address=...)``), with ``spectral-landcover`` (no weights, tile 512) and
   ``demo-unet-2d`` (conv, tile 256): wall s, MP/s, wall / threads wall;
2. scheduler cost: the engine's graph (per evaluating chunk an eval and a part per target; per chunk a
   merge of its parts) with no-op functions on ``dask.threaded.get``, and on a LocalCluster(2 x 1 thread) via
   ``client.get`` and via one ``client.submit`` per task as the engine submits: s per task and per chunk;
3. bytes: the real ``Part`` payloads (stand-in predictor of uniform probabilities) interior chunk (1, 1)
   receives from neighbours (seams) and itself, its whole evaluation, input read and labels written; exact
   geometric counts over 8 x 8 chunks; closed forms, averaged over chunks (chunk C, tile T, stride S, K
   classes, P = C·T/S windows' coverage per axis, g = gcd(C, S), a = (g/S)·Σ_{m ≥ 1, mg < T} (T − m·g) the
   mean overhang into the next chunk per axis): seam = 4·K·(P² − (P − a)²) bytes, evaluation = 4·K·P²;
   for C, S with no common period a → T²/(2S) and seam → 4·K·(C·T³ − T⁴/4)/S²;
4. memory: peak RSS of each worker of that pre-started LocalCluster and of the driver (+ scheduler).

Each measurement runs in a fresh process (this one never imports torch). Writes
results/engine-cpu.json (--quick: _work/engine/engine-cpu-quick.json) and prints a summary.
Usage: python benchmarks/bench_engine.py [--size 4096] [--chunk 1024] [--repeats 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "engine"
MODELS = {"spectral-landcover": 512, "demo-unet-2d": 256}  # name: tile
MODES = ("threads", "workers1", "workers2", "cluster2")


def _peak_rss_mb() -> dict[str, int]:
    """This process's peak RSS: VmHWM (its own address space) and ru_maxrss (kB on Linux).

    ru_maxrss of a process started by vfork + exec (subprocess, multiprocessing spawn) also holds its
    parent's peak at the time of the spawn, so VmHWM is the figure to read; ru_maxrss is kept for reference.
    """
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    return {"vmhwm": round(hwm / 1024), "ru_maxrss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def run_tile_infer(model: str, scene: str, out: str, mode: str, chunk: int) -> dict[str, Any]:
    """One tile-infer run; ``cluster2`` runs on a LocalCluster started here before the clock starts."""
    import torch

    from segflow.tile_infer import Execution, TileInferParams, tile_infer

    shutil.rmtree(out, ignore_errors=True)  # else the run finds its published outputs and returns at once
    client = cluster = None
    if mode == "cluster2":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, silence_logs=40)
        client = Client(cluster)
        client.run(torch.set_num_threads, 1)  # what Execution(workers=2) gives its workers on 2 cores
        execution = Execution(address=cluster.scheduler_address)
    else:
        execution = Execution(workers={"threads": None, "workers1": 1, "workers2": 2}[mode])
    t = time.perf_counter()
    result = tile_infer(scene, out, TileInferParams(model=model, chunk=chunk, device="cpu"), execution=execution)
    record: dict[str, Any] = {"wall_s": time.perf_counter() - t, "windows": result.windows_evaluated,
                              "chunks": result.chunks, "megapixels": result.megapixels}
    if client is not None and cluster is not None:
        record["worker_peak_rss_mb"] = sorted(client.run(_peak_rss_mb).values(), key=lambda r: r["vmhwm"])
        client.close()
        cluster.close()
    record["driver_peak_rss_mb"] = _peak_rss_mb()
    return record


def _warm() -> None:
    import segflow.engine.plan  # noqa: F401


def _noop_eval(task: Any, run: Any) -> int:
    return len(task.evaluates)


def _noop_pick(evaluation: int, target: tuple[int, ...] = ()) -> tuple[int, ...]:  # a part
    return (evaluation, *target)


def _noop_merge(task: Any, parts: list[Any], run: Any) -> dict[str, Any]:
    return {"index": list(task.index), "parts": len(parts)}


def scheduler_cost(size: int, chunk: int, tile: int, overlap: float) -> dict[str, Any]:
    """The engine's graph (same keys, dependencies and task arguments) with no-op functions."""
    from dask.threaded import get
    from distributed import Client, LocalCluster

    from segflow.engine.plan import make_plan
    from segflow.tiling import ChunkGrid, WindowGrid

    t = time.perf_counter()
    plan = make_plan(WindowGrid.create((size, size), tile, overlap), ChunkGrid.create((size, size), chunk))
    plan_s = time.perf_counter() - t
    run = (plan.grid, plan.chunks)  # stands for the RunSpec every task carries
    dsk: dict[Any, Any] = {}
    merges: list[Any] = []
    for task in plan.evaluations:
        dsk[("noop-eval", *task.index)] = (_noop_eval, task, run)
        for target in task.targets:
            dsk[("noop-part", *task.index, *target)] = (_noop_pick, ("noop-eval", *task.index), target)
    for task in plan.merged:
        dsk[("noop-merge", *task.index)] = (_noop_merge, task, [("noop-part", *s, *task.index) for s in task.sources],
                                            run)
        merges.append(("noop-merge", *task.index))
    keys, tasks, chunks = merges, len(dsk), len(plan.tasks)
    out: dict[str, Any] = {"size": size, "chunk": chunk, "tile": tile, "overlap": overlap, "chunks": chunks,
                           "tasks": tasks, "tasks_per_chunk": round(tasks / chunks, 2), "plan_s": round(plan_s, 3),
                           "parts": sum(len(t.targets) for t in plan.evaluations)}

    def record(name: str, seconds: float, results: list[Any]) -> None:
        assert len(results) == len(keys), f"{name}: {len(results)} results for {len(keys)} keys"
        out[name] = {"s": round(seconds, 3), "ms_per_task": round(1e3 * seconds / tasks, 4),
                     "ms_per_chunk": round(1e3 * seconds / chunks, 3)}

    t = time.perf_counter()
    results = get(dsk, keys, num_workers=os.cpu_count() or 1)
    record("threaded_get", time.perf_counter() - t, list(results))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=40) as cluster, Client(cluster) as client:
        client.run(_warm)  # the workers import what unpickling the tasks needs before the clock starts
        t = time.perf_counter()
        results = client.get(dsk, keys)
        record("distributed_get", time.perf_counter() - t, list(results))
        t = time.perf_counter()
        futures: dict[Any, Any] = {}
        position = {task.index: n for n, task in enumerate(plan.tasks)}
        for k, (func, *args) in dsk.items():  # as segflow.engine.execute submits: one future per task
            args = [futures[a] if isinstance(a, tuple) and a in futures else [futures[x] for x in a]
                    if isinstance(a, list) else a for a in args]
            priority = -2 * position[tuple(k[1:3])] + (0 if func is _noop_eval else 1)
            futures[k] = client.submit(func, *args, key=(f"sub-{k[0]}", *k[1:]), pure=False, priority=priority)
        results = client.gather([futures[k] for k in keys])
        record("distributed_submit", time.perf_counter() - t, list(results))
    return out


def bytes_moved(chunk: int, tile: int, overlap: float, classes: int, bands: int = 4, itemsize: int = 2
                ) -> dict[str, Any]:
    """Real part payloads of chunk (1, 1) of a 3 x 3 chunk scene, and the exact geometric count over 8 x 8 chunks."""
    import dask.array as da
    import numpy as np
    import torch

    from segflow.engine.plan import make_plan
    from segflow.predict import BatchedFunction
    from segflow.scene import Scene
    from segflow.stitch import evaluate_windows, weights_tensor
    from segflow.tiling import ChunkGrid, WindowGrid

    def uniform(x: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        return np.full((x.shape[0], classes, *x.shape[2:]), 1.0 / classes, dtype=np.float32)

    size, target = 3 * chunk, (1, 1)
    grid, chunks = WindowGrid.create((size, size), tile, overlap), ChunkGrid.create((size, size), chunk)
    plan = make_plan(grid, chunks)
    scene = Scene.from_array(da.zeros((bands, size, size), dtype=f"u{itemsize}", chunks=1024))
    predictor, weights = BatchedFunction(uniform, 16), weights_tensor(grid.tile, "gaussian")
    received: dict[str, int] = {}
    own_eval = pickled = 0
    with torch.inference_mode():
        for source in plan.by_index[target].sources:
            src = plan.by_index[source]
            assert src.read is not None
            data, valid = scene.read(src.read)
            ev = evaluate_windows(src.evaluates, grid, chunks, src.targets, src.read, data, valid, predictor,
                                  weights, own=source)
            part = ev.parts[target]
            received[str(source)] = sum(p.weighted.nbytes for p in part.pieces if p.weighted is not None)
            if source == target:
                own_eval = sum(p.weighted.nbytes for pt in ev.parts.values() for p in pt.pieces
                               if p.weighted is not None)
            else:
                pickled += len(pickle.dumps(part, protocol=5))
            del ev, part, data
    seam = sum(v for k, v in received.items() if k != str(target))

    def seam_area(plan_: Any, index: tuple[int, ...]) -> int:  # pixels of other chunks' windows inside the chunk
        box = plan_.chunks.box(index)
        return sum(inter.size for w in plan_.grid.indices_touching(box) if plan_.owner(w) != index
                   for inter in [plan_.grid.window(w).intersect(box)] if inter is not None)

    geo3 = 4 * classes * seam_area(plan, target)
    big = 8 * chunk
    plan8 = make_plan(WindowGrid.create((big, big), tile, overlap), ChunkGrid.create((big, big), chunk))
    interior = [(i, j) for i in range(1, 7) for j in range(1, 7)]
    geo8 = [4 * classes * seam_area(plan8, ij) for ij in interior]
    evals8 = [4 * classes * len(plan8.by_index[ij].evaluates) * tile**2 for ij in interior]
    c, t, s = chunk, tile, grid.stride[0]
    g = math.gcd(c, s)
    a = g / s * sum(t - m * g for m in range(1, -(-t // g)))  # mean overhang into the next chunk, per axis
    cover = c * t / s  # mean coverage of a chunk's pixels by windows, summed along one axis
    read = plan.by_index[target].read
    assert read is not None
    return {"chunk": chunk, "tile": tile, "overlap": overlap, "stride": s, "classes": classes, "chunk_index": target,
            "received_bytes_by_source": received, "seam_bytes_from_others": seam,
            "seam_pickled_bytes": pickled, "own_part_bytes": received[str(target)],
            "own_evaluation_total_bytes": own_eval, "geometric_seam_bytes": geo3,
            "geometric_matches_measured": geo3 == seam,
            "geometric_seam_bytes_interior_8x8": {"mean": round(sum(geo8) / len(geo8)), "min": min(geo8),
                                                  "max": max(geo8)},
            "geometric_evaluation_bytes_interior_8x8_mean": round(sum(evals8) / len(evals8)),
            "closed_form_seam_bytes": round(4 * classes * (cover**2 - (cover - a) ** 2)),
            "closed_form_seam_bytes_no_common_period": round(4 * classes * (c * t**3 - t**4 / 4) / s**2),
            "closed_form_evaluation_bytes": round(4 * classes * cover**2),
            "input_read_box": [list(read.start), list(read.stop)],
            "input_bytes_per_chunk": read.size * bands * itemsize, "input_bands": bands, "input_itemsize": itemsize,
            "output_label_bytes_per_chunk": chunk * chunk}


def machine() -> dict[str, Any]:
    cpu, ram = platform.processor() or platform.machine(), 0.0
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        ram = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")) / 2**20
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(ram, 1), "torch": version("torch"),
            "dask": version("dask"), "distributed": version("distributed"), "python": platform.python_version()}


def in_fresh_process(what: str, **kwargs: Any) -> dict[str, Any]:
    """``--worker WHAT KWARGS-JSON`` of this script in a new process; returns the JSON it prints last."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", what, json.dumps(kwargs)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{what} {kwargs} failed:\n{proc.stderr[-4000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        measures: dict[str, Callable[..., dict[str, Any]]] = {"run": run_tile_infer, "noop": scheduler_cost,
                                                              "bytes": bytes_moved}
        measure = measures[sys.argv[2]]
        print(json.dumps(measure(**json.loads(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=None, help="scene side in pixels (default 4096; quick 1024)")
    parser.add_argument("--chunk", type=int, default=None, help="chunk side (default 1024; quick 256)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats of the runs; fastest kept")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script works")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    size = args.size or (1024 if args.quick else 4096)
    chunk = args.chunk or (256 if args.quick else 1024)
    noop = {"size": 8192 if args.quick else 32768, "chunk": 1024, "tile": 512, "overlap": 0.25}
    nbytes = {"chunk": 1024 if args.quick else 4096, "tile": 512, "overlap": 0.25, "classes": 4}
    WORK.mkdir(parents=True, exist_ok=True)
    scene = WORK / f"scene-{size}-bgrn.tif"
    if not scene.exists():
        from segflow.synthetic import write_synthetic_scene

        write_synthetic_scene(scene, width=size, height=size, seed=7, bands=("blue", "green", "red", "nir"))

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {m: {mode: [] for mode in MODES} for m in MODELS}
    for _ in range(args.repeats):
        for model in MODELS:
            for mode in MODES:
                runs[model][mode].append(in_fresh_process("run", model=model, scene=str(scene), mode=mode,
                                                          out=str(WORK / f"out-{mode}"), chunk=chunk))
    throughput: dict[str, Any] = {}
    for model, by_mode in runs.items():
        best = {mode: min(rs, key=lambda r: r["wall_s"]) for mode, rs in by_mode.items()}
        base = best["threads"]["wall_s"]
        throughput[model] = {mode: {"wall_s": round(r["wall_s"], 3),
                                    "mp_per_s": round(r["megapixels"] / r["wall_s"], 3),
                                    "wall_over_threads": round(r["wall_s"] / base, 3),
                                    "all_walls_s": [round(x["wall_s"], 3) for x in by_mode[mode]],
                                    **{k: v for k, v in r.items() if k not in ("wall_s", "megapixels")}}
                             for mode, r in best.items()}
    results = {
        "machine": machine(),
        "settings": {"size": size, "chunk": chunk, "bands": ["blue", "green", "red", "nir"], "dtype": "uint16",
                     "models": MODELS, "batch": 16, "device": "cpu", "repeats": args.repeats, "quick": args.quick,
                     "cluster2": "LocalCluster(2 workers x 1 thread, torch 1 thread) started before the clock, "
                                 "Execution(address=...)"},
        "throughput": throughput,
        "scheduler": in_fresh_process("noop", **noop),
        "bytes": in_fresh_process("bytes", **nbytes),
    }
    target = args.results or (WORK / "engine-cpu-quick.json" if args.quick else HERE / "results" / "engine-cpu.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2) + "\n")
    summary(results, target)


def summary(r: dict[str, Any], target: Path) -> None:
    m, s = r["machine"], r["settings"]
    print(f"{m['cores']} cores ({m['cpu']}), {m['ram_gib']} GiB, torch {m['torch']}; scene {s['size']}², chunk "
          f"{s['chunk']}, best of {s['repeats']}")
    for model, by_mode in r["throughput"].items():
        print(f"  {model}: " + " | ".join(f"{mode} {v['wall_s']:.2f} s {v['mp_per_s']:.2f} MP/s "
                                          f"×{v['wall_over_threads']:.2f}" for mode, v in by_mode.items()))
        c = by_mode["cluster2"]
        workers = ", ".join(f"{w['vmhwm']} ({w['ru_maxrss']})" for w in c["worker_peak_rss_mb"])
        drivers = ", ".join(f"{mode} {v['driver_peak_rss_mb']['vmhwm']}" for mode, v in by_mode.items())
        print(f"    peak RSS MB, VmHWM (ru_maxrss): cluster2 workers {workers}; drivers {drivers}")
    n = r["scheduler"]
    print(f"  no-op graph {n['size']}², chunk {n['chunk']}, tile {n['tile']}: {n['chunks']} chunks, {n['tasks']} tasks "
          f"({n['tasks_per_chunk']} per chunk), plan {n['plan_s']} s")
    for name in ("threaded_get", "distributed_get", "distributed_submit"):
        print(f"    {name}: {n[name]['s']} s, {n[name]['ms_per_task']} ms/task, {n[name]['ms_per_chunk']} ms/chunk")
    b = r["bytes"]

    def mb(key: str, sub: str | None = None) -> str:
        return f"{(b[key] if sub is None else b[key][sub]) / 1e6:.1f}"

    print(f"  bytes, chunk {b['chunk']}, tile {b['tile']}, K {b['classes']}: seam from others "
          f"{mb('seam_bytes_from_others')} MB (geometric {mb('geometric_seam_bytes')}, interior mean "
          f"{mb('geometric_seam_bytes_interior_8x8', 'mean')}, closed form {mb('closed_form_seam_bytes')}; "
          f"pickled {mb('seam_pickled_bytes')}), own part {mb('own_part_bytes')} MB, evaluation "
          f"{mb('own_evaluation_total_bytes')} MB (interior mean {mb('geometric_evaluation_bytes_interior_8x8_mean')}, "
          f"closed form {mb('closed_form_evaluation_bytes')}), "
          f"input {mb('input_bytes_per_chunk')} MB, labels out {mb('output_label_bytes_per_chunk')} MB")
    print(f"  -> {target}")


if __name__ == "__main__":
    main()
