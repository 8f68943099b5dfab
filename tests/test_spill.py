"""Parts waiting for the next plane of a volume's chunks go to disk: same result, memory of a line of chunks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import zarr

from segflow.engine import execute as engine_execute
from segflow.engine import spill
from segflow.stitch import Part, Piece
from segflow.tile_infer import TileInferParams, tile_infer
from segflow.tiling import Box, ChunkGrid, WindowGrid

from .helpers import make_ts_package, random_image

SHAPE = (50, 40, 30)  # i, j, k of the NIfTI: the scene is Z × Y × X = 30 × 40 × 50


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ts_package(tmp_path_factory.mktemp("pkg") / "net3d", bands=1, classes=4, tile=12, spatial_dims=3)


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vol") / "vol.nii.gz"
    nib.save(nib.Nifti1Image(random_image((1, *SHAPE), seed=3)[0].astype(np.int16), np.diag([1.0, 1.0, 2.0, 1.0])),
             path)
    return path


def _mask(out: Path) -> tuple[np.ndarray, np.ndarray]:
    group = zarr.open_group(str(out / "mask.zarr"), mode="r")
    return group["labels"][:], group["scores"][:]


def test_spilled_parts_change_nothing_and_are_removed(volume: Path, package: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[int] = []
    original = spill.write

    def counting(part: Part, path: Path) -> spill.Spilled:
        handle = original(part, path)
        written.append(handle.nbytes)
        return handle

    monkeypatch.setattr(spill, "write", counting)
    whole = tile_infer(volume, tmp_path / "whole", TileInferParams(model=str(package), chunk=64, save_scores=True))
    assert whole.chunks == 1 and not written
    chunked = tile_infer(volume, tmp_path / "chunked", TileInferParams(model=str(package), chunk=10,
                                                                         save_scores=True))
    assert chunked.chunks == 3 * 4 * 5
    assert len(written) > 20 and sum(written) > 0, "parts for the next plane of chunks were written to disk"
    for got, expected in zip(_mask(tmp_path / "chunked"), _mask(tmp_path / "whole"), strict=True):
        np.testing.assert_array_equal(got, expected)
    assert not list(tmp_path.glob("chunked/**/*.part")), "every spilled part was read back and deleted"
    assert not list(tmp_path.glob(f"chunked/**/{spill.SPILL_FOLDER}"))


def test_a_run_killed_with_parts_on_disk_resumes_to_the_same_result(volume: Path, package: Path, tmp_path: Path
                                                                    ) -> None:
    def segflow(out: Path, failpoint: str | None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "SEGFLOW_FAILPOINT"}
        env.update({"SEGFLOW_FAILPOINT": failpoint} if failpoint else {})
        return subprocess.run([sys.executable, "-m", "segflow", "run", "tile-infer", "-i", str(volume), "-o", str(out),
                               "--model", str(package), "--chunk", "10", "--save-scores"],
                              env=env, capture_output=True, text=True, timeout=600)

    assert segflow(tmp_path / "ref", None).returncode == 0
    killed = segflow(tmp_path / "out", "chunk:20")
    assert killed.returncode < 0
    assert list(tmp_path.glob("out/**/*.part")), "the killed run had parts on disk"
    resumed = segflow(tmp_path / "out", None)
    assert resumed.returncode == 0, resumed.stderr
    for got, expected in zip(_mask(tmp_path / "out"), _mask(tmp_path / "ref"), strict=True):
        np.testing.assert_array_equal(got, expected)
    assert not list(tmp_path.glob("out/**/*.part"))


def _peak_parts_in_memory(volume: Path, package: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    alive: set[int] = set()
    peak = 0
    lock = threading.Lock()
    original = engine_execute.evaluate_chunk

    def counted(*args: Any) -> Any:
        nonlocal peak
        evaluation = original(*args)
        with lock:
            for part in evaluation.parts.values():
                if not part.has_valid:  # seams (a chunk's own part lives only until its merge)
                    alive.add(id(part))
                    weakref.finalize(part, alive.discard, id(part))
            peak = max(peak, len(alive))
        return evaluation

    monkeypatch.setattr(engine_execute, "evaluate_chunk", counted)
    tile_infer(volume, out, TileInferParams(model=str(package), chunk=10))
    return peak


def test_seams_held_in_memory_are_those_of_a_line_of_chunks_not_a_plane(
        volume: Path, package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # merge order: X (5 chunks) slowest, then Y (4), then Z (3): a line is 3 chunks, a plane 12
    line = 3
    with_spill = _peak_parts_in_memory(volume, package, tmp_path / "a", monkeypatch)
    assert with_spill <= 7 * (line + 2), f"{with_spill} seam parts held in memory at once"
    monkeypatch.setattr(spill, "far_apart", lambda *a: False)
    without = _peak_parts_in_memory(volume, package, tmp_path / "b", monkeypatch)
    assert without > 7 * (line + 2), f"without spilling a plane of seams waits ({without} parts)"


def test_a_part_survives_the_round_trip_to_disk(tmp_path: Path) -> None:
    box = Box((0, 2, 4), (3, 5, 6))
    weighted = torch.rand(4, *box.shape)
    part = Part((Piece((0, 1, 2), box, (1, 0, 3), weighted), Piece((0, 1, 3), box, (0, 0, 0), None)),
                has_valid=False, valid=None)
    handle = spill.write(part, tmp_path / "p" / "q" / "a.part")  # folders made as needed
    assert handle.nbytes == weighted.numel() * 4
    back = spill.load(handle)
    assert not (tmp_path / "p" / "q" / "a.part").exists()
    assert (back.has_valid, back.valid) == (False, None)
    assert [(p.window, p.box, p.offset) for p in back.pieces] == [(p.window, p.box, p.offset) for p in part.pieces]
    assert back.pieces[1].weighted is None
    assert back.pieces[0].weighted is not None and torch.equal(back.pieces[0].weighted, weighted)


def test_spill_space_is_estimated_only_when_a_run_spills() -> None:
    grid2d = WindowGrid.create((4000, 4000), 256, 0.25)
    assert spill.spill_bytes(grid2d, ChunkGrid.create((4000, 4000), 1024), 10) == 0
    grid = WindowGrid.create((512, 512, 800), 64, 0.25)
    assert spill.spill_bytes(grid, ChunkGrid.create((512, 512, 800), 1024), 10) == 0  # one chunk
    got = spill.spill_bytes(grid, ChunkGrid.create((512, 512, 800), 128), 10)
    assert 512 * 512 * 64 * 10 * 4 <= got <= 512 * 512 * 64 * 10 * 4 * 4
    assert spill.far_apart(0, 5, 3) and not spill.far_apart(0, 4, 3) and not spill.far_apart(10, 12, 3)
    small = WindowGrid.create((64, 64, 64), 16, 0.25)
    assert spill.spill_bytes(small, ChunkGrid.create((64, 64, 64), 32), 3) > 0  # 2 x 2 x 2 chunks
    assert spill.spill_bytes(small, ChunkGrid.create((64, 64, 64), (22, 32, 64)), 3) == 0  # 3 x 2 x 1: a plane
    # of two chunks is no further ahead than a line and its diagonal
    assert spill.spill_bytes(small, ChunkGrid.create((64, 64, 64), (22, 22, 64)), 3) > 0  # 3 x 3 x 1: 3 ahead


def test_a_part_with_its_validity_survives_and_clear_removes_a_folder(tmp_path: Path) -> None:
    valid = np.zeros((2, 3), dtype=bool)
    valid[1, 2] = True
    back = spill.load(spill.write(Part((), has_valid=True, valid=valid), tmp_path / "v.part"))
    assert back.has_valid and back.valid is not None and np.array_equal(back.valid, valid)
    (tmp_path / "parts" / "deep").mkdir(parents=True)
    (tmp_path / "parts" / "deep" / "x.part").write_bytes(b"0")
    spill.clear(tmp_path / "parts")
    assert not (tmp_path / "parts").exists()
    spill.clear(tmp_path / "parts")  # a missing folder is fine
