"""Run identity (segflow.engine.resume): what an input's identity holds and what changes a run's fingerprint.

A resumed run must never reuse chunks computed from another input, model or parameters, and a run
must not start afresh for nothing: each field is checked against its closed form here.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

import segflow.engine.resume as resume
from segflow import __version__
from segflow.engine import input_identity, run_fingerprint

MIB = 1 << 20


def _file(path: Path, size: int) -> Path:
    path.write_bytes(bytes((i * 7 + i // 251) % 256 for i in range(size)))
    return path


def _rewrite_keeping_mtime(path: Path, at: int, value: int) -> None:
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[at] = value
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_small_file_is_identified_by_its_whole_content(tmp_path: Path) -> None:
    p = _file(tmp_path / "scene.tif", 1000)
    stat = p.stat()
    assert input_identity(p) == {"name": "scene.tif", "size": 1000, "mtime_ns": stat.st_mtime_ns,
                                 "probe_sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    assert input_identity(str(p)) == input_identity(p), "a path object and its string name the same input"


@pytest.mark.parametrize("size", [MIB, MIB + 1, MIB + 5000, 3 * MIB + 17])
def test_a_large_file_is_identified_by_its_first_and_last_mib(tmp_path: Path, size: int) -> None:
    p = _file(tmp_path / "big.tif", size)
    data = p.read_bytes()
    tail = data[max(MIB, size - MIB):]
    expected = hashlib.sha256(data[:MIB] + tail).hexdigest()
    identity = input_identity(p)
    assert identity["size"] == size and identity["probe_sha256"] == expected


def test_header_and_tail_changes_change_the_identity_a_middle_change_does_not(tmp_path: Path) -> None:
    p = _file(tmp_path / "big.tif", 3 * MIB)
    before = input_identity(p)
    _rewrite_keeping_mtime(p, int(1.5 * MIB), 0xAB ^ p.read_bytes()[int(1.5 * MIB)])
    assert input_identity(p) == before, "the middle is not probed (cheap for inputs of any size)"
    for at in (0, MIB - 1, 2 * MIB, 3 * MIB - 1):
        _rewrite_keeping_mtime(p, at, 0xAB ^ p.read_bytes()[at])
        changed = input_identity(p)
        assert changed["probe_sha256"] != before["probe_sha256"], f"a change at byte {at}"
        assert changed["mtime_ns"] == before["mtime_ns"] and changed["size"] == before["size"]
        before = changed


def test_a_rewritten_file_with_the_same_bytes_is_another_input(tmp_path: Path) -> None:
    p = _file(tmp_path / "scene.tif", 100)
    before = input_identity(p)
    os.utime(p, ns=(before["mtime_ns"] + 10**9, before["mtime_ns"] + 10**9))
    after = input_identity(p)
    assert after["mtime_ns"] == before["mtime_ns"] + 10**9 and after != before


def test_names_without_a_readable_local_file_are_identified_by_name(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    missing = str(tmp_path / "gone.tif")
    assert input_identity(missing) == {"name": missing}
    store = tmp_path / "scene.zarr"
    store.mkdir()
    assert input_identity(store) == {"name": str(store)}, "a directory (a Zarr store) is not a file"
    p = _file(tmp_path / "locked.tif", 10)

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError("denied")

    monkeypatch.setattr(resume, "open", refuse, raising=False)
    assert input_identity(p) == {"name": str(p)}, "an unreadable file"
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("x.tif", b"x")
    assert input_identity(f"/vsizip/{archive}/x.tif") == {"name": f"/vsizip/{archive}/x.tif"}


def test_a_gdal_name_carries_its_local_files_identity(tmp_path: Path) -> None:
    archive = _file(tmp_path / "a.zip", 2000)
    name = f"/vsizip/{archive}/dir/x.tif"
    assert input_identity(name) == {"name": name, "file": input_identity(archive)}


def test_the_fingerprint_is_the_digest_of_every_field_and_the_version() -> None:
    inputs = {"input": {"name": "a.tif", "size": 3}}
    model = {"weights_sha256": "w", "contract_sha256": "c"}
    parameters = {"tile": 256, "overlap": 0.25, "output": Path("out")}
    record = {"segflow": __version__, "inputs": inputs, "model": model,
              "parameters": {"tile": 256, "overlap": 0.25, "output": "out"}}
    expected = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    assert run_fingerprint(inputs, model, parameters) == expected
    assert run_fingerprint(inputs, model, dict(reversed(parameters.items()))) == expected, "key order is irrelevant"


def test_every_field_changes_the_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = {"input": {"name": "a.tif", "size": 3}}
    model = {"weights_sha256": "w"}
    parameters = {"tile": 256}
    base = run_fingerprint(inputs, model, parameters)
    others = {
        run_fingerprint({"input": {"name": "a.tif", "size": 4}}, model, parameters),
        run_fingerprint(inputs, {"weights_sha256": "v"}, parameters),
        run_fingerprint(inputs, model, {"tile": 512}),
        run_fingerprint(inputs, model, {"tile": 256, "overlap": 0.5}),
        run_fingerprint(model, inputs, parameters),
    }
    monkeypatch.setattr(resume, "__version__", "0.0.0-other")
    others.add(run_fingerprint(inputs, model, parameters))
    assert base not in others and len(others) == 6
