"""tile-infer benchmark: overhead over pure model time, memory scaling, and MONAI as the peer.

Measured in one run, printed as ratios, and written to benchmarks/results/ with the machine:

1. overhead = end-to-end tile-infer wall time / the model's forward passes alone over the same
   number of windows at the same batch size (the same network the pipeline runs);
2. memory   = peak RSS of tile-infer on a LARGE² x 3 scene / peak RSS on a SMALL² x 3 scene
   (scene generated beforehand);
3. peer     = end-to-end time file -> COG / monai.inferers.sliding_window_inference on the
   same image already in memory, with the same model, tile, overlap and batch.

Every measurement runs in a fresh process of its own and this parent process never runs torch:
on this VM a child process computes measurably slower (~10 %) while its parent holds the memory
left by earlier torch work, which skewed the ratios when the parent measured the model itself.

Models (``--model``): ``unet`` (segflow's full-resolution 2D UNet, 0.48 M parameters: a slow model, tile
512, batch 16), ``light`` (MONAI's ``UNet(channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2))``: a light
model whose per-window costs the slow one hides, tile 256, batch 8), and ``default`` (the weight-free
built-in ``spectral-landcover``: there the pipeline's own costs are everything; instead of MONAI the
peer is segflow's I/O alone: reading the scene and writing mask.zarr and the COG, in one process).

Usage: python benchmarks/bench_tile_infer.py [--model unet|light|default] [--small 4096] [--large 16384]
       [--device cpu] [--precision fp32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
import yaml

from segflow.models import load_module, resolve_package
from segflow.models.arch import build_architecture
from segflow.predict import Predictor
from segflow.synthetic import write_synthetic_scene
from segflow.tile_infer import TileInferParams

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
OVERLAP, CLASSES = 0.25, 4
MODELS = {"unet": (512, 16), "light": (256, 8), "default": (512, 16)}  # tile, batch
TILE, BATCH = MODELS["unet"]


def _network(kind: str) -> torch.nn.Module:
    if kind == "light":
        from monai.networks.nets import UNet

        return UNet(spatial_dims=2, in_channels=3, out_channels=CLASSES, channels=(16, 32, 64, 128, 256),
                    strides=(2, 2, 2, 2))
    return build_architecture("unet", spatial_dims=2, in_channels=3, out_channels=CLASSES)


def make_package(root: Path, kind: str = "unet") -> Path:
    """A TorchScript package of the ``kind`` network (random weights)."""
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = _network(kind).eval()
    torch.jit.trace(net, torch.zeros(1, 3, TILE, TILE)).save(str(root / "model.ts"))
    spec = {
        "name": f"bench-{kind}", "version": "0", "spatial_dims": 2, "weights": "model.ts",
        "input": {"bands": [{"name": n, "index": i + 1} for i, n in enumerate(["red", "green", "blue"])],
                  "normalization": {"mode": "scale", "scale": 0.0001}},
        "tile": TILE, "overlap": OVERLAP, "output": {"activation": "softmax"},
        "classes": [{"name": f"class{i}"} for i in range(CLASSES)],
    }
    (root / "model.yaml").write_text(yaml.safe_dump(spec))
    return root


def scene(size: int, bands: tuple[str, ...] = ("red", "green", "blue")) -> Path:
    path = WORK / (f"scene-{size}.tif" if len(bands) == 3 else f"scene-{size}-{len(bands)}band.tif")
    if not path.exists():
        write_synthetic_scene(path, width=size, height=size, seed=7, bands=bands)
    return path


def run_tile_infer(path: Path, pkg: Path | str, device: str, out: Path, precision: str = "fp32") -> dict:
    """tile-infer in a fresh process; returns its run.json plus the process's peak RSS."""
    shutil.rmtree(out, ignore_errors=True)  # else the run finds its own published outputs and returns at once
    code = (
        "import json,sys,time;"
        "from segflow.tile_infer import tile_infer, TileInferParams;"
        "t=time.perf_counter();"
        f"r=tile_infer({str(path)!r},{str(out)!r},TileInferParams(model={str(pkg)!r},batch={BATCH},device={device!r}"
        f"{_precision_argument(precision)}));"
        "w=time.perf_counter()-t;"
        "print(json.dumps({'wall':w,'windows':r.windows_evaluated,"
        # VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's resident size when it was spawned
        "'peak_rss_mb':int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))/1024}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _precision_argument(precision: str) -> str:
    """The precision keyword of TileInferParams, when this version of segflow has one."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(TileInferParams)}
    return f",precision={precision!r}" if "precision" in names else ""


def io_alone_seconds(path: Path, out: Path) -> float:
    """segflow's I/O without a model: read every block of the scene, write labels into a mask.zarr with the
    run's chunking, verify it, and write and verify the label COG, as the pipeline's sinks do."""
    from segflow.io.cog import write_label_cog
    from segflow.io.mask_store import MaskStore
    from segflow.io.readback import verify_label_raster, verify_store
    from segflow.io.readers import open_scene
    from segflow.tiling import ChunkGrid

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t = time.perf_counter()
    scene = open_scene(str(path))
    chunks = ChunkGrid.create(scene.spatial_shape, 2048)
    store = MaskStore.create(out / "mask.zarr", scene.spatial_shape, chunks.chunk, [f"c{i}" for i in range(CLASSES)],
                             save_scores=False, attrs={**scene.geometry.attrs(), "run_fingerprint": "io"})
    for index, box in chunks:
        data, _ = scene.read(box)
        store.write(box, (np.asarray(data[0]) % CLASSES).astype(np.uint8))
        store.mark_done(index, {})
    verify_store(store)
    cog = write_label_cog(store, out / "labels.tif", scene.geometry, store.attrs["class_names"], None)
    verify_label_raster(cog, store)
    return time.perf_counter() - t


def in_fresh_process(what: str, *args: str) -> float:
    """Run ``--worker WHAT ARGS`` of this script in a new process; returns the seconds it prints."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", what, *args],
                          capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def pure_model_seconds(pkg: Path, windows: int, device: str, precision: str = "fp32") -> float:
    """Forward passes alone over ``windows`` windows at the same batch size: the network the pipeline runs, in
    its memory order and precision, on a batch already on the device."""
    package = resolve_package(pkg)
    predictor = Predictor(load_module(package), package.spec, device=device, batch_size=BATCH, precision=precision)
    dev = predictor.device
    predictor.predict_batch(np.random.default_rng(0).random((BATCH, 3, TILE, TILE), dtype=np.float32))  # optimise
    x = torch.rand(BATCH, 3, TILE, TILE, device=dev)
    if predictor.memory_format is not None:
        x = x.contiguous(memory_format=predictor.memory_format)
    module = predictor.module
    with torch.inference_mode():
        predictor._run(module, x)  # warm up
        sync(dev)
        t = time.perf_counter()
        for start in range(0, windows, BATCH):
            predictor._run(module, x[: min(BATCH, windows - start)])
        sync(dev)
        return time.perf_counter() - t


def monai_seconds(path: Path, pkg: Path, device: str) -> float:
    """MONAI's sliding window on the image already in memory, same model, tile, overlap, batch."""
    from monai.inferers import sliding_window_inference

    package = resolve_package(pkg)
    dev = torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    net = load_module(package).to(dev)
    with rasterio.open(path) as ds:
        image = torch.from_numpy(ds.read().astype(np.float32))[None].to(dev)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(net(x * 1e-4), dim=1)

    with torch.inference_mode():
        for _ in range(3):  # warm up: TorchScript's profiling executor optimises after the first calls
            predictor(image[:, :, :TILE, :TILE].expand(BATCH, -1, -1, -1).contiguous())
        sync(dev)
        t = time.perf_counter()
        out = sliding_window_inference(image, (TILE, TILE), BATCH, predictor, overlap=OVERLAP, mode="gaussian")
        out.argmax(1)
        sync(dev)
        return time.perf_counter() - t


def machine() -> str:  # torch.cuda here only queries the driver; it runs no kernels
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}"


def worker(what: str, args: list[str]) -> None:
    """The measurements that run torch, each called in a process of its own by :func:`main`."""
    if what == "package":
        make_package(Path(args[0]), args[1])
        print(0.0)
    elif what == "io":
        print(io_alone_seconds(Path(args[0]), Path(args[1])))
    elif what == "model":
        print(pure_model_seconds(Path(args[0]), int(args[1]), args[2], *args[3:]))
    elif what == "monai":
        print(monai_seconds(Path(args[0]), Path(args[1]), args[2]))
    else:
        raise SystemExit(f"unknown worker {what!r}")


def main() -> None:
    global TILE, BATCH
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        TILE, BATCH = MODELS[os.environ.get("BENCH_MODEL", "unet")]
        worker(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="unet")
    parser.add_argument("--small", type=int, default=4096)
    parser.add_argument("--large", type=int, default=16384)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the small-scene measurements")
    args = parser.parse_args()
    TILE, BATCH = MODELS[args.model]
    os.environ["BENCH_MODEL"] = args.model  # the worker processes' tile and batch
    WORK.mkdir(exist_ok=True)
    if args.model == "default":
        pkg: Path | str = "spectral-landcover"
    else:
        pkg = WORK / f"{args.model}-pkg"
        in_fresh_process("package", str(pkg), args.model)
    bands = ("blue", "green", "red", "nir") if args.model == "default" else ("red", "green", "blue")
    small, large = scene(args.small, bands), scene(args.large, bands)

    # The small-scene measurements are interleaved and repeated; each keeps its fastest time (the least
    # disturbed by anything else on the machine) and the largest peak RSS.
    runs, models, peers = [], [], []
    for _ in range(args.repeats):
        runs.append(run_tile_infer(small, pkg, args.device, WORK / "out-small", args.precision))
        if args.model != "default":
            models.append(in_fresh_process("model", str(pkg), str(runs[-1]["windows"]), args.device, args.precision))
            peers.append(in_fresh_process("monai", str(small), str(pkg), args.device))
    e2e = {"wall": min(r["wall"] for r in runs), "windows": runs[0]["windows"],
           "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
    big = run_tile_infer(large, pkg, args.device, WORK / "out-large", args.precision)
    io_large = in_fresh_process("io", str(large), str(WORK / "out-io")) if args.model == "default" else None

    results: dict = {
        "machine": machine(),
        "device": args.device,
        "settings": {"tile": TILE, "overlap": OVERLAP, "batch": BATCH, "chunk": 2048, "precision": args.precision,
                     "model": {"unet": "segflow unet 0.48M (TorchScript)",
                               "light": "MONAI UNet (16, 32, 64, 128, 256), strides 2 (TorchScript)",
                               "default": "built-in spectral-landcover (no weights)"}[args.model],
                     "repeats": args.repeats},
        "all_small_runs_s": {"end_to_end": [round(r["wall"], 2) for r in runs],
                             "pure_model": [round(m, 2) for m in models], "monai": [round(p, 2) for p in peers]},
        "small": {"size": args.small, "windows": e2e["windows"], "end_to_end_s": round(e2e["wall"], 2),
                  "peak_rss_mb": round(e2e["peak_rss_mb"])},
        "large": {"size": args.large, "windows": big["windows"], "end_to_end_s": round(big["wall"], 2),
                  "peak_rss_mb": round(big["peak_rss_mb"])},
        "ratios": {"memory_large_over_small": round(big["peak_rss_mb"] / e2e["peak_rss_mb"], 3)},
    }
    if models:
        model, peer = min(models), min(peers)
        results["small"].update(pure_model_s=round(model, 2), monai_in_memory_s=round(peer, 2))
        results["overhead_per_repeat"] = [round(r["wall"] / m, 3) for r, m in zip(runs, models, strict=True)]
        results["ratios"].update(overhead_end_to_end_over_model=round(e2e["wall"] / model, 3),
                                 end_to_end_over_monai=round(e2e["wall"] / peer, 3))
    if io_large is not None:
        results["large"]["io_alone_s"] = round(io_large, 2)
        results["ratios"]["large_end_to_end_over_io_alone"] = round(big["wall"] / io_large, 3)
    print(json.dumps(results, indent=2))
    suffix = "" if args.model == "unet" else f"-{args.model}"
    target = args.results or HERE / "results" / f"tile_infer-{args.device}{suffix}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
