"""Builders for the catalogue of bad inputs (tests/test_bad_inputs.py).

Each builder writes one bad input under ``c.tmp`` with code and returns the ``segflow`` command
line that meets it. Before the builder runs, ``c.out`` holds a copy of an earlier good run's
outputs; the test checks that the bad command leaves every byte under ``c.guard`` (``c.out``
unless the builder says otherwise) as it was. Builders that need more (a mounted filesystem, a
lock held by another process, a file that must never appear) say so through ``c``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
import rasterio
import torch
import yaml
from safetensors.torch import save_file

import segflow.io.space as space
from segflow.engine.workers import PredictorFactory
from segflow.io.mask_store import MaskStore

from .helpers import free_port, make_ts_package, random_image, spec_dict, threshold_package, write_geotiff
from .test_dicom import hu_volume, write_series
from .test_model_formats import Payload
from .test_nifti import write_nifti

Args = list[str | Path]


def tree_digest(path: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under ``path`` (hidden ones too); ``{".": sha256}`` for a file."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            file = Path(root) / name
            out[file.relative_to(path).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    return out


@dataclass(frozen=True)
class Earlier:
    """Inputs and outputs of the module's good runs: a raster (with vectors) and a DICOM series."""

    scene: Path  # 4-band uint16 GeoTIFF, 64 x 64
    raster_args: tuple[str, ...]  # the good raster run's options besides --input and --output
    raster_out: Path
    series: Path  # a CT series folder of 6 slices, 16 x 16
    volume_model: Path  # 3D threshold package (class 1 where the value > 100)
    dicom_out: Path


def make_earlier(root: Path, run: Callable[[Args], int]) -> Earlier:
    """Write the good inputs and run segflow on them once (``run(argv) -> exit code``)."""
    scene = write_geotiff(root / "scene.tif", random_image((4, 64, 64), seed=1))
    raster_args = ("--tile", "32", "--vectorize")
    assert run(["run", "tile-infer", "-q", "-i", scene, "-o", root / "raster-out", *raster_args]) == 0
    series = root / "series"
    write_series(series, hu_volume((6, 16, 16)), seed=3)
    model = threshold_package(root / "volume-model", 100.0)
    assert run(["run", "tile-infer", "-q", "-i", series, "-o", root / "dicom-out", "-m", model]) == 0
    return Earlier(scene, raster_args, root / "raster-out", series, model, root / "dicom-out")


@dataclass
class Case:
    """What a builder works with, and what it tells the test besides the command line."""

    tmp: Path
    earlier: Earlier
    monkeypatch: pytest.MonkeyPatch
    out: Path  # holds a copy of the earlier raster run's outputs
    guard: Path = field(init=False)  # must be byte-identical after the bad command
    needles: list[str] = field(default_factory=list)  # words the message must hold, known only when built
    checks: list[Callable[[str], None]] = field(default_factory=list)  # more assertions on the message line
    cleanups: list[Callable[[], object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.guard = self.out

    def with_outputs(self, earlier_out: Path, folder: Path | None = None) -> Path:
        """Make ``folder`` (default ``c.out``) a copy of the outputs in ``earlier_out``; it becomes the guard."""
        folder = folder or self.out
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(earlier_out, folder)
        self.out = self.guard = folder
        return folder

    def tile_infer(self, source: str | Path, *options: str | Path) -> Args:
        return ["run", "tile-infer", "-q", "-i", source, "-o", self.out, "--tile", "32", *options]

    def geotiff(self, name: str, array: np.ndarray, **kw: Any) -> Path:
        return write_geotiff(self.tmp / name, array, **kw)

    def new_scene(self) -> Path:
        """A good scene other than the earlier run's: a run on it has outputs to write."""
        return self.geotiff("new.tif", random_image((4, 48, 48), seed=5))

    def named(self, name: str, data: bytes | None = None) -> Path:
        """``c.tmp / name`` (written with ``data`` if given), which the message must name."""
        path = self.tmp / name
        if data is not None:
            path.write_bytes(data)
        self.needles.append(str(path))
        return path


Builder = Callable[[Case], Args]


# ----------------------------------------------------------------------------- GeoTIFF


def geotiff_truncated(c: Case) -> Args:
    data = c.earlier.scene.read_bytes()
    return c.tile_infer(c.named("cut.tif", data[: len(data) // 3]))


def geotiff_corrupt_block(c: Case) -> Args:
    """Random bytes over one compressed block inside the file: found while the chunks are read."""
    scene = c.geotiff("damaged.tif", random_image((4, 128, 128), seed=4), block=32)
    with rasterio.open(scene) as ds:
        offset, size = (int(ds.get_tag_item(f"BLOCK_{k}_1_2", "TIFF", bidx=1)) for k in ("OFFSET", "SIZE"))
    data = bytearray(scene.read_bytes())
    data[offset:offset + size] = random.Random(0).randbytes(size)
    scene.write_bytes(bytes(data))
    c.needles.append(f"block x 1, y 2 of band 1 is {size} bytes at byte offset {offset}")
    return c.tile_infer(scene, "--chunk", "32")


def option(*extra: str) -> Builder:
    """The earlier good input with ``extra`` options (a bad option value)."""
    return lambda c: c.tile_infer(c.earlier.scene, *extra)


def geotiff_directory(c: Case) -> Args:
    folder = c.named("notes")
    folder.mkdir()
    (folder / "readme.txt").write_text("not an image\n")
    (folder / "table.csv").write_text("a,b\n1,2\n")
    return c.tile_infer(folder)


# ----------------------------------------------------------------------------- NIfTI


def nifti(c: Case, name: str, voxels: tuple[int, ...] = (20, 18, 16), affine: np.ndarray | None = None) -> Path:
    """A float32 NIfTI of values 0-200 (``voxels`` as nibabel's i, j, k) written by nibabel."""
    data = (np.random.default_rng(0).random(voxels) * 200).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), c.tmp / name)
    return c.tmp / name


def nifti_truncated(c: Case) -> Args:
    data = nifti(c, "whole.nii.gz", affine=np.diag([1.0, 1.0, 2.0, 1.0])).read_bytes()
    return c.tile_infer(c.named("cut.nii.gz", data[: len(data) // 3]), "-m", c.earlier.volume_model)


def nifti_affine(affine: np.ndarray) -> Builder:
    """A volume whose sform (code 1) is ``affine``, written field by field (nibabel refuses to)."""
    def build(c: Case) -> Args:
        data = (np.random.default_rng(0).random((20, 18, 16)) * 200).astype(np.float32)
        write_nifti(c.named("bad.nii.gz"), data, sform=(affine, 1))
        return c.tile_infer(c.tmp / "bad.nii.gz", "-m", c.earlier.volume_model)

    return build


# ----------------------------------------------------------------------------- DICOM


def _series(c: Case, name: str, **kw: Any) -> list[dict[str, Any]]:
    return write_series(c.tmp / name, hu_volume((6, 16, 16)), **kw)


def dicom_two_series(c: Case) -> Args:
    a = _series(c, "study/a", seed=1, description="arterial")
    b = _series(c, "study/b", seed=2, description="venous")
    for slices in (a, b):
        c.needles.append(f"--series {pydicom.dcmread(slices[0]['path']).SeriesInstanceUID} (CT ")
    return c.tile_infer(c.tmp / "study", "-m", c.earlier.volume_model)


def dicom_missing_slice(c: Case) -> Args:
    slices = _series(c, "gap")
    slices[3]["path"].unlink()
    c.needles.append(f"image 4 ({slices[4]['path'].name}")
    return c.tile_infer(c.tmp / "gap", "-m", c.earlier.volume_model)


def dicom_uneven(c: Case) -> Args:
    _series(c, "uneven", positions=[np.array([0.0, 0.0, 2.0 * k + (0.7 if k >= 3 else 0.0)]) for k in range(6)])
    return c.tile_infer(c.tmp / "uneven", "-m", c.earlier.volume_model)


def dicom_empty(c: Case) -> Args:
    c.named("empty").mkdir()
    return c.tile_infer(c.tmp / "empty", "-m", c.earlier.volume_model)


def dicom_not_dicom(c: Case) -> Args:
    folder = c.named("scans")
    folder.mkdir()
    (folder / "slice001.dcm").write_bytes(np.random.default_rng(1).bytes(600))  # named .dcm, no DICM preamble
    (folder / "notes.txt").write_text("slices exported by hand\n")
    return c.tile_infer(folder, "-m", c.earlier.volume_model)


# ----------------------------------------------------------------------------- model packages


def package(c: Case, name: str, weights: str | None = "model.ts", **spec: Any) -> Path:
    root = c.tmp / name
    root.mkdir()
    (root / "model.yaml").write_text(yaml.safe_dump(spec_dict(bands=3, classes=2, weights=weights, **spec)))
    return root


def model_no_yaml(c: Case) -> Args:
    c.named("pkg").mkdir()
    (c.tmp / "pkg" / "model.safetensors").write_bytes(b"\0" * 64)
    return c.tile_infer(c.earlier.scene, "-m", c.tmp / "pkg")


def model_bad_yaml(c: Case) -> Args:
    root = package(c, "pkg")
    (root / "model.yaml").write_text("name: broken\ninput: [bands\ntile: 32\n")
    return c.tile_infer(c.earlier.scene, "-m", root)


def model_weights_mismatch(c: Case) -> Args:
    root = package(c, "pkg", weights="model.safetensors", architecture={"name": "unet"})
    save_file({"encoder.weight": torch.zeros(3, 3)}, str(root / "model.safetensors"))
    return c.tile_infer(c.earlier.scene, "-m", root)


def model_weights_truncated(c: Case) -> Args:
    root = package(c, "pkg", weights="model.safetensors", architecture={"name": "unet"})
    save_file({"w": torch.zeros(64, 64)}, str(root / "model.safetensors"))
    data = (root / "model.safetensors").read_bytes()
    (root / "model.safetensors").write_bytes(data[: len(data) // 2])
    return c.tile_infer(c.earlier.scene, "-m", root)


def model_weights_missing(c: Case) -> Args:
    root = package(c, "pkg")
    c.needles.append(str(root / "model.ts"))
    return c.tile_infer(c.earlier.scene, "-m", root)


def model_weights_replaced(c: Case) -> Args:
    """The weights change on disk after the run recorded their sha256 (a package updated under a running job)."""
    root = make_ts_package(c.tmp / "pkg", bands=3, classes=2, tile=32, seed=0)
    other = make_ts_package(c.tmp / "other", bands=3, classes=2, tile=32, seed=1)
    build = PredictorFactory.build

    def replaced_then_build(self: PredictorFactory) -> Any:
        shutil.copy(other / "model.ts", root / "model.ts")
        return build(self)

    c.monkeypatch.setattr(PredictorFactory, "build", replaced_then_build)
    c.needles.append(str(root / "model.ts"))
    return c.tile_infer(c.earlier.scene, "-m", root)


def model_pickle_with_code(c: Case) -> Args:
    marker = c.tmp / "PWNED"
    root = package(c, "pkg", weights="model.pt", architecture={"name": "unet"})
    torch.save(Payload(marker), root / "model.pt")

    def never_ran(line: str) -> None:
        assert not marker.exists(), "the pickle's code ran"

    c.checks.append(never_ran)
    return c.tile_infer(c.earlier.scene, "-m", root)


# ----------------------------------------------------------------------------- training configs


def train_config(c: Case, *, named: bool = True, **changes: Any) -> Path:
    """configs/train-demo-unet2d.yaml, made small, with top-level ``changes``; the message must name it."""
    config = yaml.safe_load(Path(__file__).parent.parent.joinpath("configs/train-demo-unet2d.yaml").read_text())
    config.update({"epochs": 1, "chips_per_epoch": 8, "batch_size": 4, **changes})
    config["model"]["chip"] = 32
    path = c.named("train.yaml") if named else c.tmp / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(c: Case, config: Path) -> Args:
    return ["train", "-q", "--config", config, "--output", c.out]


def train_missing_file(c: Case) -> Args:
    pair = {"image": str(c.named("gone.tif")), "labels": str(c.tmp / "gone_labels.tif")}
    return train(c, train_config(c, named=False, data={"pairs": [pair]}))


def train_encoder_weights_builtin(c: Case) -> Args:
    """ImageNet weights for a network whose encoder is the built-in one (not torchvision's layout)."""
    weights = c.tmp / "resnet18.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, weights)
    config = train_config(c, named=False)
    data = yaml.safe_load(config.read_text())
    data["model"]["encoder_weights"] = str(weights)
    config.write_text(yaml.safe_dump(data))
    return train(c, config)


# ----------------------------------------------------------------------------- outputs


def output_is_file(c: Case) -> Args:
    c.guard = c.tmp / "result.txt"
    c.guard.write_text("keep me\n")
    c.out = c.guard
    return c.tile_infer(c.earlier.scene)


def output_under_file(c: Case) -> Args:
    c.guard = c.tmp / "result.txt"
    c.guard.write_text("keep me\n")
    c.out = c.guard / "out"
    return c.tile_infer(c.earlier.scene)


def output_read_only(c: Case) -> Args:
    if os.geteuid() == 0:
        pytest.skip("root ignores file modes (the read-only filesystem case covers root)")
    os.chmod(c.out, 0o555)
    c.cleanups.append(lambda: os.chmod(c.out, 0o755))
    return c.tile_infer(c.new_scene())


def mount_tmpfs(c: Case, size: str) -> Path:
    """A fresh tmpfs of ``size`` under ``c.tmp`` (root on Linux only, as tests/test_disk_full.py does)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux (CI runs the tests as root)")
    point = c.tmp / "fs"
    point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    c.cleanups.append(lambda: subprocess.run(["umount", "-l", str(point)], capture_output=True))
    return point


def output_read_only_fs(c: Case) -> Args:
    point = mount_tmpfs(c, "1m")
    c.with_outputs(c.earlier.raster_out, point / "out")
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
    return c.tile_infer(c.new_scene())


def _room_for_earlier(c: Case, spare_kib: int) -> Path:
    """A tmpfs holding the earlier raster outputs with about ``spare_kib`` KiB to spare."""
    used = sum(p.stat().st_size + 4095 & ~4095 for p in c.earlier.raster_out.rglob("*") if p.is_file())
    point = mount_tmpfs(c, f"{used // 1024 + 64 + spare_kib}k")  # + room for the folders' own pages
    return c.with_outputs(c.earlier.raster_out, point / "out")


def output_disk_full(c: Case) -> Args:
    """Refused before anything is written: a 1024² scene needs far more than the few KiB left."""
    _room_for_earlier(c, 16)
    return c.tile_infer(c.geotiff("big.tif", random_image((4, 1024, 1024), seed=6)))


def output_disk_full_mid_run(c: Case) -> Args:
    """The disk fills while the run writes (the up-front estimate switched off)."""
    _room_for_earlier(c, 48)
    c.monkeypatch.setattr(space, "CLEARLY", 10**9)
    return c.tile_infer(c.geotiff("big.tif", random_image((4, 768, 768), seed=6)), "--tile", "256")


def output_disk_full_injected(c: Case) -> Args:
    """ENOSPC from the mask store's writes, as tests/test_disk_full.py injects it (no root needed)."""
    def full(*args: object, **kw: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    c.monkeypatch.setattr(MaskStore, "write", full)
    return c.tile_infer(c.new_scene())


def output_locked(c: Case) -> Args:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from segflow.io.lock import OutputLock; "
         f"OutputLock({str(c.out)!r}).acquire(); print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)

    def stop() -> None:
        holder.kill()
        holder.wait()

    c.cleanups.append(stop)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    c.needles.append(f"pid {holder.pid}")
    return c.tile_infer(c.new_scene())


# ----------------------------------------------------------------------------- services


def postgis_down(c: Case) -> Args:
    """The same command as the earlier run plus --postgis: its outputs are up to date, only delivery fails."""
    url = f"postgresql://segflow:secret@127.0.0.1:{free_port()}/gis?table=objects"

    def hidden(line: str) -> None:
        assert "secret" not in line and "segflow:***@" in line, line

    c.checks.append(hidden)
    return ["run", "tile-infer", "-q", "-i", c.earlier.scene, "-o", c.out, *c.earlier.raster_args, "--postgis", url]


def pacs_down(c: Case) -> Args:
    """The earlier DICOM run's command plus --pacs: outputs up to date, the PACS unreachable."""
    c.with_outputs(c.earlier.dicom_out)
    target = f"dicomweb+http://127.0.0.1:{free_port()}/dicom-web"
    return ["run", "tile-infer", "-q", "-i", c.earlier.series, "-o", c.out, "-m", c.earlier.volume_model,
            "--pacs", target]


def device_cuda(c: Case) -> Args:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    return c.tile_infer(c.new_scene(), "--device", "cuda")
