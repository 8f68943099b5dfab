"""Vectorization benchmark: segflow's chunked tracing against ``rasterio.features.shapes`` on the whole array.

Measured in one run, printed as ratios, written to benchmarks/results/vectorize-cpu.json:

- time   = segflow's vectorization of a SIZE² mask store (reading it chunk by chunk, tracing, seam
           joins and unions, validity, map coordinates, attributes: everything up to the feature
           stream) / the whole-array approach on the same store: reading the labels into memory,
           then ``rasterio.features.shapes(labels, mask=labels > 0)`` in one call, its polygons
           turned into shapely geometries (what a caller needs); also divided by the ``shapes``
           call alone (``time_vs_shapes_alone``);
- memory = peak RSS of segflow's step / peak RSS of the whole-array step (each in a fresh process,
           both starting from the same zarr store; the whole-array side reads the labels into memory);
- writing the GeoPackage from the stream is timed separately.

The mask (about 100 000 objects at 16384²) is generated chunk by chunk from global coordinates: a
"stuff" class from a low-frequency field and a "thing" class of rectangles, one per 52-pixel cell
with random size and offset (some touch their neighbours or cross chunk seams).

Usage: python benchmarks/bench_vectorize.py [--size 16384] [--chunk 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
CELL = 44
NAMES = ["background", "field", "building"]


def make_mask(path: Path, size: int, chunk: int) -> int:
    """Write the benchmark's label store; return the number of building rectangles drawn."""
    from segflow.io.mask_store import MaskStore
    from segflow.tiling import ChunkGrid

    store = MaskStore.create(path, (size, size), (chunk, chunk), NAMES, save_scores=False,
                             attrs={"run_fingerprint": "0" * 64, "crs": "EPSG:32633",
                                    "transform": [0.5, 0, 500000, 0, -0.5, 5000000]})
    cells = size // CELL
    rng = np.random.default_rng(1)
    h, w = rng.integers(8, 50, (2, cells, cells))
    dy, dx = rng.integers(0, CELL - 8, (2, cells, cells))
    keep = rng.uniform(size=(cells, cells)) < 0.97
    drawn = int(keep.sum())
    for _, box in ChunkGrid.create((size, size), chunk):
        (y0, x0), (y1, x1) = box.start, box.stop
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        field = np.sin(yy / 310.0) + np.cos(xx / 270.0) + 0.5 * np.sin((xx + yy) / 97.0)
        labels = np.where(field > 0.9, 1, 0).astype(np.uint8)
        for cy in range(max(0, y0 // CELL - 1), min(cells, y1 // CELL + 1)):
            for cx in range(max(0, x0 // CELL - 1), min(cells, x1 // CELL + 1)):
                if not keep[cy, cx]:
                    continue
                ry, rx = cy * CELL + dy[cy, cx], cx * CELL + dx[cy, cx]
                a, b = max(ry, y0), min(ry + h[cy, cx], y1)
                c, d = max(rx, x0), min(rx + w[cy, cx], x1)
                if a < b and c < d:
                    labels[a - y0:b - y0, c - x0:d - x0] = 2
        store.write(box, labels)
    return drawn


SEGFLOW = """
import json, time
from pathlib import Path
from affine import Affine
from segflow.io.mask_store import MaskStore
from segflow.vectorize import VectorOptions, tracing_chunk, vectorize
store = MaskStore.open(Path({path!r}), mode="r")
chunk = tracing_chunk(store)
t = time.perf_counter()
n = 0
for batch in vectorize(store, chunk, Affine(*store.attrs["transform"]), {names!r}, ("stuff", "stuff", "thing"),
                       VectorOptions(), scene_id="bench", model="m", model_version="1", run_id="r"):
    n += len(batch)
print(json.dumps({{"wall": time.perf_counter() - t, "features": n}}))
"""

WHOLE = """
import json, time
import numpy as np, rasterio.features, shapely, zarr
from affine import Affine
group = zarr.open_group({path!r}, mode="r")
t = time.perf_counter()
labels = group["labels"][:]
read = time.perf_counter() - t
transform = Affine(*group.attrs["transform"])
t = time.perf_counter()
polygons = [shapely.geometry.shape(g) for g, v in rasterio.features.shapes(labels, mask=labels > 0, connectivity=4,
                                                                           transform=transform)]
print(json.dumps({{"wall": time.perf_counter() - t, "read": read, "features": len(polygons)}}))
"""

WRITE = """
import json, time
from pathlib import Path
from affine import Affine
from segflow.features import LayerInfo
from segflow.io.mask_store import MaskStore
from segflow.io.vector_files import write_vectors
from segflow.vectorize import VectorOptions, tracing_chunk, vectorize
store = MaskStore.open(Path({path!r}), mode="r")
chunk = tracing_chunk(store)
t = time.perf_counter()
stream = vectorize(store, chunk, Affine(*store.attrs["transform"]), {names!r}, ("stuff", "stuff", "thing"),
                   VectorOptions(), scene_id="bench", model="m", model_version="1", run_id="r")
n = write_vectors(Path({out!r}), "gpkg", LayerInfo(None, 32633, "bench"), stream)
print(json.dumps({{"wall": time.perf_counter() - t, "features": n}}))
"""


def child(code: str) -> dict:
    # VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's resident size when it was spawned
    wrapped = code + "\nprint('RSS', next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))"
    done = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    lines = done.stdout.strip().splitlines()
    out = json.loads(next(line for line in lines if line.startswith("{")))
    out["peak_rss_mib"] = int(lines[-1].split()[1]) / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--chunk", type=int, default=2048)
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    path = WORK / f"vector-mask-{args.size}.zarr"
    shutil.rmtree(path, ignore_errors=True)
    drawn = make_mask(path, args.size, args.chunk)
    ours = child(SEGFLOW.format(path=str(path), names=NAMES))
    whole = child(WHOLE.format(path=str(path)))
    written = child(WRITE.format(path=str(path), names=NAMES, out=str(WORK / "objects.gpkg")))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    results = {
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()},
        "size": args.size, "chunk": args.chunk, "rectangles_drawn": drawn,
        "segflow": {k: round(v, 2) if isinstance(v, float) else v for k, v in ours.items()},
        "whole_array_shapes": {k: round(v, 2) if isinstance(v, float) else v for k, v in whole.items()},
        "segflow_with_gpkg": {k: round(v, 2) if isinstance(v, float) else v for k, v in written.items()},
        "ratios": {"time": round(ours["wall"] / (whole["read"] + whole["wall"]), 3),
                   "time_vs_shapes_alone": round(ours["wall"] / whole["wall"], 3),
                   "memory": round(ours["peak_rss_mib"] / whole["peak_rss_mib"], 3)},
    }
    print(f"{args.size}²: {ours['features']} objects; segflow {ours['wall']:.1f} s, "
          f"{ours['peak_rss_mib']:.0f} MiB; whole-array shapes "
          f"{whole['wall']:.1f} s after reading the array in {whole['read']:.1f} s ({whole['features']} polygons), "
          f"{whole['peak_rss_mib']:.0f} MiB; time {results['ratios']['time']} (vs shapes alone "
          f"{results['ratios']['time_vs_shapes_alone']}), memory {results['ratios']['memory']}; "
          f"with the GeoPackage written {written['wall']:.1f} s")
    out = HERE / "results" / "vectorize-cpu.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
