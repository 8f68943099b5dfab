"""Volume benchmark: tile-infer on NIfTI against MONAI's sliding window, and memory against volume size.

Measured in one run, printed as ratios, written to benchmarks/results/volume-<device>.json:

1. peer   = end-to-end time NIfTI file -> labels.nii.gz (tile-infer, every sink it runs) /
            ``monai.inferers.sliding_window_inference`` + arg-max on the same volume already in
            memory, same network, normalisation, activation, roi, overlap, batch and Gaussian
            blending, fp32 both; for two models: the trained ``demo-unet-3d`` (a 3D UNet) and a
            light 10-class network (two 3x3x3 convolutions) whose model time is small, so
            per-voxel pipeline costs show. MONAI runs the network as a user hands it over (eager,
            default memory order); segflow runs it frozen in channels-last order (its CPU fast
            path). ``pipeline`` divides by MONAI running segflow's optimised network instead,
            which isolates what the pipeline adds around the forward passes;
2. memory = peak RSS of tile-infer on a LARGE volume / peak RSS on a SMALL one (light model).

Every measurement runs in a fresh process; this parent never runs torch (see bench_tile_infer.py).

Usage: python benchmarks/bench_volume.py [--small 256] [--large 512x512x800] [--device cpu]
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

import nibabel as nib
import numpy as np
import torch
import yaml

from segflow.synthetic.volume import synthesize_volume

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
ROI, OVERLAP, BATCH = 64, 0.25, 4


class Light(torch.nn.Module):
    """Two 3x3x3 convolutions to 10 classes: a model whose own time is small."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.b = torch.nn.Conv3d(4, 10, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x / 1000.0)))


def light_package(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    torch.jit.trace(Light().eval(), torch.zeros(1, 1, ROI, ROI, ROI)).save(str(root / "model.ts"))
    spec = {"name": "bench-light-3d", "version": "0", "spatial_dims": 3, "weights": "model.ts",
            "input": {"bands": [{"name": "ct", "index": 1}]}, "tile": ROI, "overlap": OVERLAP,
            "output": {"activation": "softmax"}, "classes": [{"name": f"c{i}"} for i in range(10)]}
    (root / "model.yaml").write_text(yaml.safe_dump(spec))
    return root


def volume(shape: tuple[int, int, int], spacing: float = 4.0) -> Path:
    """A synthetic CT-like volume as an uncompressed NIfTI, RAS at ``spacing`` mm (demo-unet-3d's grid)."""
    path = WORK / f"ct-{'x'.join(map(str, shape))}.nii"
    if not path.exists():
        if max(shape) <= 256:
            image, _ = synthesize_volume(shape, seed=5)
        else:  # a large volume: tile a 128³ synthetic block (the generator holds whole arrays)
            block, _ = synthesize_volume((128, 128, 128), seed=5)
            reps = [-(-n // 128) for n in shape]
            image = np.tile(block, reps)[: shape[0], : shape[1], : shape[2]]
        affine = np.diag([spacing, spacing, spacing, 1.0])
        nib.save(nib.Nifti1Image(np.ascontiguousarray(image.transpose(2, 1, 0)), affine), path)
    return path


def child(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line; add the peak RSS (MiB)."""
    # VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's resident size when it was spawned
    wrapped = code + "\nprint('RSS', next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))"
    done = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, check=True)
    lines = done.stdout.strip().splitlines()
    out = json.loads(next(line for line in lines if line.startswith("{")))
    out["peak_rss_mib"] = int(lines[-1].split()[1]) / 1024
    return out


def segflow_run(path: Path, model: str, device: str, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    return child(
        "import json,time\n"
        "from segflow.tile_infer import tile_infer, TileInferParams\n"
        "t=time.perf_counter()\n"
        f"r=tile_infer({str(path)!r},{str(out)!r},TileInferParams(model={model!r},batch={BATCH},device={device!r}))\n"
        "print(json.dumps({'wall':time.perf_counter()-t,'windows':r.windows_evaluated}))\n")


def monai_run(path: Path, model: str, device: str, optimize: bool) -> dict:
    """MONAI's sliding window on the volume in memory (reading the file is not timed), arg-max included.

    ``optimize``: the network as segflow runs it (frozen, channels-last on the CPU), else as given.
    """
    return child(
        "import json,time,numpy as np,nibabel as nib,torch\n"
        "from monai.inferers import sliding_window_inference\n"
        "from segflow.models import load_module, resolve_package\n"
        "from segflow.predict import Predictor\n"
        f"pkg=resolve_package({model!r}); net=load_module(pkg).eval().to({device!r})\n"
        f"pred=Predictor(net, pkg.spec, device={device!r}, batch_size={BATCH}, optimize={optimize!r})\n"
        f"x=np.asarray(nib.load({str(path)!r}).dataobj).transpose(2,1,0)[None,None].astype(np.float32)\n"
        "x=torch.from_numpy(np.ascontiguousarray(x))\n"
        "t=time.perf_counter()\n"
        "with torch.inference_mode():\n"
        f"    p=sliding_window_inference(x,({ROI},)*3,{BATCH},lambda w: pred.predict_tensor(w.numpy(), None),"
        f"overlap={OVERLAP},mode='gaussian',sw_device={device!r},device='cpu')\n"
        "    labels=p.argmax(1).to(torch.uint8).numpy()\n"
        "print(json.dumps({'wall':time.perf_counter()-t}))\n")


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=256)
    parser.add_argument("--large", default="512x512x800", help="Z x Y x X of the large volume")
    parser.add_argument("--peer-size", type=int, default=128, help="side of the volume compared with MONAI")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    light = str(light_package(WORK / "light-3d"))
    results: dict = {"machine": machine(), "roi": ROI, "overlap": OVERLAP, "batch": BATCH, "peer": {}}
    peer_volume = volume((args.peer_size,) * 3)
    for name, model in (("demo-unet-3d", "demo-unet-3d"), ("light-10-class", light)):
        ours = segflow_run(peer_volume, model, args.device, WORK / "out-peer")
        theirs = monai_run(peer_volume, model, args.device, optimize=False)
        same_net = monai_run(peer_volume, model, args.device, optimize=True)
        results["peer"][name] = {"segflow_s": round(ours["wall"], 2), "monai_s": round(theirs["wall"], 2),
                                 "monai_segflow_network_s": round(same_net["wall"], 2),
                                 "ratio": round(ours["wall"] / theirs["wall"], 3),
                                 "pipeline": round(ours["wall"] / same_net["wall"], 3), "windows": ours["windows"]}
        print(f"peer {name}: segflow {ours['wall']:.1f} s / MONAI {theirs['wall']:.1f} s = "
              f"{ours['wall'] / theirs['wall']:.3f}; / MONAI with segflow's network {same_net['wall']:.1f} s = "
              f"{ours['wall'] / same_net['wall']:.3f}")
    small = segflow_run(volume((args.small,) * 3), light, args.device, WORK / "out-small")
    large_shape = tuple(int(v) for v in args.large.split("x"))
    large = segflow_run(volume(large_shape), light, args.device, WORK / "out-large")  # type: ignore[arg-type]
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    results["memory"] = {"small": [args.small] * 3, "large": list(large_shape),
                         "small_peak_mib": round(small["peak_rss_mib"]), "large_peak_mib": round(large["peak_rss_mib"]),
                         "ratio": round(ratio, 3), "large_s": round(large["wall"], 1),
                         "voxels_ratio": round(np.prod(large_shape) / args.small**3, 1)}
    print(f"memory: {large['peak_rss_mib']:.0f} MiB ({args.large}) / {small['peak_rss_mib']:.0f} MiB "
          f"({args.small}³) = {ratio:.3f} for {results['memory']['voxels_ratio']}x the voxels")
    out = HERE / "results" / f"volume-{args.device}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
