"""A full disk: one line, exit 4, nothing published, earlier outputs byte-identical, resumable.

The real-filesystem tests mount small tmpfs filesystems (root only, as on CI) and skip with
the reason elsewhere; the injected-failure tests run everywhere.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio

import segflow.io.space as space
from segflow.cli import main
from segflow.errors import OutputError
from segflow.io.mask_store import MaskStore
from segflow.io.readback import verify_label_raster, verify_store
from segflow.io.sinks import write_sinks
from segflow.synthetic import write_synthetic_scene
from segflow.tiling import Box


def _tree_digest(folder: Path) -> dict[str, str]:
    """Path → sha256 of every file under ``folder`` (hidden staging folders excluded)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not rel.startswith(".segflow-staging-") and rel != ".segflow.lock":
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = main(["run", "tile-infer", "-q", *args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scenes")
    small = write_synthetic_scene(root / "small.tif", width=192, height=192, seed=1).path
    big = write_synthetic_scene(root / "big.tif", width=1536, height=1536, seed=2).path
    return {"small": Path(small), "big": Path(big)}


def _can_mount() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "mounting a small tmpfs needs root on Linux (CI runs the tests as root)"
    return None


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[object]:
    """A function ``mount(size) -> Path`` giving a fresh tmpfs of ``size`` (e.g. ``"64k"``)."""
    reason = _can_mount()
    if reason:
        pytest.skip(reason)
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                                capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_refuses_up_front_when_clearly_too_small(small_fs, scenes, capsys) -> None:
    fs = small_fs("16k")
    code, err = _run(capsys, "--input", str(scenes["big"]), "--output", str(fs / "out"))
    assert code == 4
    assert len(err) == 1 and err[0].startswith("segflow: error: not enough disk space")
    assert "free" in err[0] and "needed" in err[0] and str(fs / "out") in err[0]
    assert not [p for p in (fs / "out").iterdir() if not p.name.startswith(".segflow.lock")]


@pytest.mark.parametrize("size", ["48k", "96k", "160k", "240k", "400k"])
def test_full_disk_mid_run_keeps_earlier_outputs(size, small_fs, scenes, capsys, monkeypatch) -> None:
    """Whatever stage runs out of space (store, COG, overviews, run.json), the rule holds."""
    fs = small_fs(size)
    out = fs / "out"
    code, err = _run(capsys, "--input", str(scenes["small"]), "--output", str(out))
    if code != 0:
        pytest.skip(f"{size} does not even hold the small run ({err})")
    before = _tree_digest(out)
    monkeypatch.setattr(space, "CLEARLY", 10**9)  # never refuse up front: meet the full disk mid-run
    code, err = _run(capsys, "--input", str(scenes["big"]), "--output", str(out))
    if code == 0:  # it fitted after all: then the new outputs must be whole
        assert _tree_digest(out) != before
        _check_whole(out)
        return
    assert code == 4, err
    assert len(err) == 1 and err[0].startswith("segflow: error: not enough disk space"), err
    assert _tree_digest(out) == before
    _check_whole(out)


def _check_whole(out: Path) -> None:
    """labels.tif reads whole (GDAL's checksum of every tile) and equals the published mask.zarr."""
    info = subprocess.run(["gdalinfo", "-checksum", str(out / "labels.tif")], capture_output=True, text=True)
    assert info.returncode == 0 and "Checksum=" in info.stdout and "ERROR" not in info.stderr, info.stderr
    store = MaskStore.open(out / "mask.zarr")
    verify_store(store)
    verify_label_raster(out / "labels.tif", store)


def test_resumes_after_space_is_freed(small_fs, scenes, capsys, monkeypatch) -> None:
    fs = small_fs("200k")
    monkeypatch.setattr(space, "CLEARLY", 10**9)
    out = fs / "out"
    code, err = _run(capsys, "--input", str(scenes["big"]), "--output", str(out), "--chunk", "512")
    assert code == 4, err
    subprocess.run(["mount", "-o", "remount,size=8m", str(fs)], check=True)
    assert main(["run", "tile-infer", "--input", str(scenes["big"]), "--output", str(out), "--chunk", "512"]) == 0
    summary = capsys.readouterr().out
    assert "reused from an earlier attempt" in summary
    with rasterio.open(out / "labels.tif") as ds:
        labels = ds.read(1)
    assert np.array_equal(labels, MaskStore.open(out / "mask.zarr").read_labels(Box((0, 0), labels.shape)))


# ---------------------------------------------------------------- injected failures (no root needed)


def test_enospc_from_the_store_is_exit_4(tmp_path, scenes, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    assert _run(capsys, "--input", str(scenes["small"]), "--output", str(out))[0] == 0
    before = _tree_digest(out)

    def full(*args: object, **kw: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(MaskStore, "write", full)
    code, err = _run(capsys, "--input", str(scenes["big"]), "--output", str(out))
    assert code == 4 and len(err) == 1 and "not enough disk space" in err[0]
    assert _tree_digest(out) == before


def test_silent_gdal_failure_is_caught_by_its_messages(tmp_path, scenes, capsys, monkeypatch) -> None:
    """libtiff prints 'No space left on device' and GDAL returns success: still exit 4, nothing printed."""
    out = tmp_path / "out"
    assert _run(capsys, "--input", str(scenes["small"]), "--output", str(out))[0] == 0
    before = _tree_digest(out)
    import segflow.io.sinks as sinks

    real = sinks.write_label_cog

    def quietly_failing(store, path, *args, **kw):
        result = real(store, path, *args, **kw)
        os.write(2, b"_tiffWriteProc: No space left on device.\n")
        return result

    monkeypatch.setattr(sinks, "write_label_cog", quietly_failing)
    code, err = _run(capsys, "--input", str(scenes["big"]), "--output", str(out))
    assert code == 4, err
    assert err == [e for e in err if e.startswith("segflow: error: not enough disk space to write labels.tif")]
    assert len(err) == 1
    assert _tree_digest(out) == before


def test_a_damaged_cog_is_not_published(tmp_path, scenes, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    assert _run(capsys, "--input", str(scenes["small"]), "--output", str(out))[0] == 0
    before = _tree_digest(out)
    import segflow.io.sinks as sinks

    real = sinks.write_label_cog

    def truncating(store, path, *args, **kw):
        result = real(store, path, *args, **kw)
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size * 2 // 3)
        return result

    monkeypatch.setattr(sinks, "write_label_cog", truncating)
    code, err = _run(capsys, "--input", str(scenes["big"]), "--output", str(out))
    assert code == 4 and len(err) == 1 and "does not read back as written" in err[0], err
    assert _tree_digest(out) == before


def test_verify_label_raster_finds_changed_pixels(tmp_path, scenes) -> None:
    out = tmp_path / "out"
    assert main(["run", "tile-infer", "-q", "--input", str(scenes["small"]), "--output", str(out)]) == 0
    store = MaskStore.open(out / "mask.zarr")
    verify_label_raster(out / "labels.tif", store)
    with rasterio.open(out / "labels.tif", "r+", IGNORE_COG_LAYOUT_BREAK="YES") as ds:
        band = ds.read(1)
        band[5, 7] = (int(band[5, 7]) + 1) % 4
        ds.write(band, 1)
    with pytest.raises(OutputError, match="1 pixels differ"):
        verify_label_raster(out / "labels.tif", store)


def test_verify_store_finds_a_damaged_chunk(tmp_path, scenes) -> None:
    out = tmp_path / "out"
    assert main(["run", "tile-infer", "-q", "--save-scores", "--input", str(scenes["small"]), "--output",
                 str(out)]) == 0
    store = MaskStore.open(out / "mask.zarr")
    verify_store(store)
    chunk = next(p for p in (out / "mask.zarr" / "scores").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:10])
    with pytest.raises(OutputError, match="scores"):
        verify_store(MaskStore.open(out / "mask.zarr"))


def test_write_sinks_removes_a_partial_output(tmp_path) -> None:
    class Failing:
        name = "broken.tif"
        entries = ("broken.tif",)

        def write(self, store, folder):
            (folder / self.name).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"broken\.tif"):
        write_sinks([Failing()], None, tmp_path, needed=1000)  # type: ignore[arg-type,list-item]
    assert not (tmp_path / "broken.tif").exists()


def test_space_estimate_and_messages(tmp_path) -> None:
    assert space.estimate_bytes((1000, 1000), 4, False) < space.estimate_bytes((1000, 1000), 4, True)
    assert space.estimate_bytes((2000, 2000), 4, False) > 3 * space.estimate_bytes((1000, 1000), 4, False) // 2
    assert space.format_bytes(1536) == "1.5 KiB" and space.format_bytes(10) == "10 B"
    assert space.is_disk_full(OSError(errno.EDQUOT, "quota"))
    assert space.is_disk_full(RuntimeError("write failed"), "TIFFWriteProc: No space left on device.")
    assert not space.is_disk_full(OSError(errno.EACCES, "denied"))
    space.check_space(tmp_path, 1)  # fits
    with pytest.raises(OutputError, match=r"roughly .* needed"):
        space.check_space(tmp_path, 1 << 62)


def test_a_finished_run_repeated_on_a_nearly_full_disk_does_nothing(small_fs, scenes, capsys) -> None:
    fs = small_fs("400k")
    out = fs / "out"
    assert _run(capsys, "--input", str(scenes["small"]), "--output", str(out))[0] == 0
    before = _tree_digest(out)
    free = space.free_bytes(fs) or 0
    (fs / "filler").write_bytes(b"\0" * max(0, free - 8192))  # leave 8 KiB: far below the run's estimate
    code, err = _run(capsys, "--input", str(scenes["small"]), "--output", str(out))
    assert code == 0 and err == [], err
    assert _tree_digest(out) == before


def test_a_worker_error_sent_as_its_repr_is_restored() -> None:
    """dask.distributed sends an exception it cannot pickle with its traceback as Exception(repr)."""
    from segflow.engine.execute import _result
    from segflow.errors import InputError

    class Failed:
        def __init__(self, exc: BaseException):
            self.exc = exc

        def result(self) -> None:
            raise self.exc

    with pytest.raises(InputError, match=r"^cannot read window rows 0:3 of 'a.tif'$"):
        _result(Failed(Exception(repr(InputError("cannot read window rows 0:3 of 'a.tif'")))))
    with pytest.raises(OutputError, match="disk"):
        _result(Failed(OutputError("disk")))
    with pytest.raises(Exception, match=r"^NotOurs\('x'\)$"):
        _result(Failed(Exception("NotOurs('x')")))
    with pytest.raises(RuntimeError):
        _result(Failed(RuntimeError("InputError('x')")))
