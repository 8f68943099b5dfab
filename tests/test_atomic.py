"""segflow.io.atomic: the one "write to a temporary name, then rename" helper."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from segflow.errors import OutputError
from segflow.io import atomic
from segflow.io.atomic import (
    OLD_PREFIX,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    publish_path,
    temporary_sibling,
)


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_temporary_sibling_is_hidden_unique_and_in_the_same_directory(tmp_path: Path) -> None:
    final = tmp_path / "report.json"
    a, b = temporary_sibling(final), temporary_sibling(final)
    assert a != b and a.parent == b.parent == tmp_path
    assert a.name.startswith(f".report.json.{os.getpid()}.") and a.name.endswith(".tmp")
    assert len(a.name.split(".")[-2]) == 12
    assert not a.exists(), "nothing is created"


def test_missing_parent_directory_is_one_line_output_error(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "out.txt"
    with pytest.raises(OutputError, match="does not exist") as info:
        atomic_write_text(target, "x")
    assert str(info.value) == (f"cannot write {str(target)!r}: directory {str(tmp_path / 'missing')!r} does not exist; "
                               "expected an existing, writable directory; create it or choose another path")
    assert _entries(tmp_path) == []


def test_write_text_replaces_and_keeps_newlines(tmp_path: Path) -> None:
    target = tmp_path / "a.csv"
    target.write_text("old", encoding="utf-8")
    assert atomic_write_text(target, "x,y\r\n1,2\n") == target
    assert target.read_bytes() == b"x,y\r\n1,2\n"
    assert _entries(tmp_path) == ["a.csv"], "no temporary left"


def test_reader_never_sees_a_missing_or_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    versions = [bytes([65 + i]) * 200_000 for i in range(2)]
    atomic_write_bytes(target, versions[0])
    stop = threading.Event()
    seen: list[str] = []

    def poll() -> None:
        while not stop.is_set():
            try:
                data = target.read_bytes()
            except FileNotFoundError:
                seen.append("missing")
                continue
            if data not in versions:
                seen.append(f"partial ({len(data)} bytes)")

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for i in range(200):
            atomic_write_bytes(target, versions[i % 2])
    finally:
        stop.set()
        reader.join()
    assert seen == []
    assert _entries(tmp_path) == ["data.bin"]


def test_failure_inside_the_context_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"old contents")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half-writ")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old contents"
    assert _entries(tmp_path) == ["model.pt"]


def test_os_error_inside_the_context_becomes_output_error(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    with pytest.raises(OutputError, match=r"cannot write .*t\.txt: Permission denied; my hint$") as info:
        with atomic_path(target, hint="my hint") as tmp:
            tmp.write_bytes(b"x")
            raise PermissionError(13, "Permission denied")
    assert info.value.errno == 13 and isinstance(info.value, OSError)
    assert _entries(tmp_path) == []


def _make_dir(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")


def _read_dir(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in folder.iterdir()}


def test_directory_replaces_directory(tmp_path: Path) -> None:
    target = tmp_path / "pkg"
    _make_dir(target, {"model.yaml": "old", "stale.txt": "gone"})
    with atomic_path(target) as staging:
        _make_dir(staging, {"model.yaml": "new"})
    assert _read_dir(target) == {"model.yaml": "new"}
    assert _entries(tmp_path) == ["pkg"], "no staging and no moved-aside entry left"
    with atomic_path(tmp_path / "fresh") as staging:
        _make_dir(staging, {"a": "1"})
    assert _read_dir(tmp_path / "fresh") == {"a": "1"}


def test_failed_second_rename_puts_the_old_directory_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # the two-rename path (not Linux)
    target = tmp_path / "pkg"
    _make_dir(target, {"model.yaml": "old"})
    real = os.replace
    calls: list[tuple[str, str]] = []

    def flaky(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append((Path(src).name, Path(dst).name))
        if Path(dst) == target and Path(src).name.endswith(".tmp"):
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", flaky)
    with pytest.raises(OutputError, match=r"cannot write .*pkg: No space left on device \(.* free in "):
        with atomic_path(target) as staging:
            _make_dir(staging, {"model.yaml": "new"})
    assert calls[0][0] == "pkg" and calls[0][1].startswith(OLD_PREFIX) and calls[0][1].endswith("-pkg")
    assert len(calls) == 3 and calls[2] == (calls[0][1], "pkg"), calls
    assert _read_dir(target) == {"model.yaml": "old"}
    assert _entries(tmp_path) == ["pkg"]


def test_publish_path_moves_aside_with_the_recovery_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # the two-rename path (not Linux)
    target, staged = tmp_path / "out.zarr", tmp_path / "staged"
    _make_dir(target, {"old": "1"})
    _make_dir(staged, {"new": "2"})
    aside: list[str] = []
    real = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        aside.append(Path(dst).name)
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", spy)
    publish_path(staged, target)
    assert OLD_PREFIX == ".segflow-old-"
    name = aside[0]
    assert name.startswith(OLD_PREFIX) and name[len(OLD_PREFIX):].split("-", 1)[-1] == "out.zarr"
    assert len(name[len(OLD_PREFIX):].split("-", 1)[0]) == 12
    assert _read_dir(target) == {"new": "2"} and _entries(tmp_path) == ["out.zarr"]


def test_publish_without_replace_never_touches_an_existing_entry(tmp_path: Path) -> None:
    target, staged = tmp_path / "cache", tmp_path / "staged"
    _make_dir(target, {"a": "winner"})
    _make_dir(staged, {"a": "loser"})
    with pytest.raises(FileExistsError):
        publish_path(staged, target, replace=False)
    assert _read_dir(target) == {"a": "winner"} and staged.is_dir()
    file_staged = tmp_path / "f.tmp"
    file_staged.write_text("new", encoding="utf-8")
    (tmp_path / "f").write_text("old", encoding="utf-8")
    with pytest.raises(FileExistsError):
        publish_path(file_staged, tmp_path / "f", replace=False)
    assert (tmp_path / "f").read_text(encoding="utf-8") == "old"
    publish_path(file_staged, tmp_path / "g", replace=False)
    assert (tmp_path / "g").read_text(encoding="utf-8") == "new" and not file_staged.exists()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root on Linux only)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"mount not permitted: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_is_output_error_with_free_space_and_keeps_the_old_file(tiny_disk: Path) -> None:
    target = tiny_disk / "scene.bin"
    atomic_write_bytes(target, b"first version " * 100)
    before = target.read_bytes()
    with pytest.raises(OutputError) as info:
        atomic_write_bytes(target, os.urandom(256 * 1024))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot write {target}: No space left on device (")
    assert f"free in {tiny_disk})" in message, message
    assert info.value.errno == 28
    assert target.read_bytes() == before
    assert _entries(tiny_disk) == ["scene.bin"], "no temporary left"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux only")
def test_a_directory_is_swapped_in_one_step_on_linux(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target, staged = tmp_path / "out.zarr", tmp_path / "staged"
    _make_dir(target, {"old": "1"})
    _make_dir(staged, {"new": "2"})
    renames: list[str] = []
    real = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        renames.append(Path(dst).name)
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", spy)
    publish_path(staged, target)
    assert renames == [], "no two-step rename"
    assert _read_dir(target) == {"new": "2"} and _entries(tmp_path) == ["out.zarr"]


def test_recovery_does_not_swap_back_a_directory_already_swapped_in(tmp_path: Path) -> None:
    """Killed right after the swap: the staged name holds the old entry, and the journal knows it."""
    from segflow.io.publish import JOURNAL, Staging, recover

    out = tmp_path / "out"
    out.mkdir()
    _make_dir(out / "mask.zarr", {"v": "old"})
    staging = Staging(out)
    _make_dir(staging.path / "mask.zarr", {"v": "new"})
    (staging.path / "run.json").write_text("new")
    ids = {name: [os.lstat(staging.path / name).st_dev, os.lstat(staging.path / name).st_ino]
           for name in ("mask.zarr", "run.json")}
    (staging.path / JOURNAL).write_text(json.dumps({"names": ["mask.zarr", "run.json"], "ids": ids}))
    # the swap happened, then the process died
    os.rename(out / "mask.zarr", tmp_path / "x")
    os.rename(staging.path / "mask.zarr", out / "mask.zarr")
    os.rename(tmp_path / "x", staging.path / "mask.zarr")
    (staging.path / "owner.json").write_text(json.dumps({"pid": 9_999_999, "space": _space()}))  # no such pid
    recover(out)
    assert _read_dir(out / "mask.zarr") == {"v": "new"}
    assert (out / "run.json").read_text() == "new"
    assert sorted(p.name for p in out.iterdir()) == ["mask.zarr", "run.json"]


def _space() -> str:
    from segflow.io.publish import _process_space

    return _process_space()


# --------------------------------------------------------------------------- errors: type, errno, one line with the fix

@pytest.mark.parametrize(("error", "reason"), [
    (OSError(errno.EIO, "Input/output error"), "Input/output error"),
    (OSError("the network share went away"), "the network share went away"),  # no strerror: its text
    (OSError(), "OSError"),  # no text at all: its type
])
def test_the_reason_of_an_os_error_is_always_named(tmp_path: Path, error: OSError, reason: str) -> None:
    target = tmp_path / "t.txt"
    with pytest.raises(OutputError) as info, atomic_path(target, hint="fix it") as tmp:
        tmp.write_bytes(b"x")
        raise error
    assert str(info.value) == f"cannot write {target}: {reason}; fix it"
    assert _entries(tmp_path) == []


def test_the_write_helpers_pass_the_callers_hint_on(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)  # a non-empty folder where the file should go
    for write in (lambda: atomic_write_bytes(target, b"x", hint="pick another name"),
                  lambda: atomic_write_text(target, "x", hint="pick another name")):
        with pytest.raises(OutputError) as info:
            write()
        assert str(info.value) == f"cannot write {target}: Is a directory; pick another name"
        assert info.value.errno == errno.EISDIR
    assert _entries(tmp_path) == ["taken"] and _entries(target) == ["inside"]


def test_without_replace_the_error_names_the_existing_entry_and_a_new_directory_is_moved(tmp_path: Path) -> None:
    target, staged = tmp_path / "cache", tmp_path / "staged"
    _make_dir(target, {"a": "winner"})
    _make_dir(staged, {"a": "new"})
    with pytest.raises(FileExistsError) as info:
        publish_path(staged, target, replace=False)
    assert (info.value.errno, info.value.strerror, info.value.filename) == (
        errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    publish_path(staged, tmp_path / "entry", replace=False)
    assert _read_dir(tmp_path / "entry") == {"a": "new"} and _entries(tmp_path) == ["cache", "entry"]


def test_without_replace_a_file_that_appears_meanwhile_is_not_clobbered(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    staged, final = tmp_path / "f.tmp", tmp_path / "f"
    staged.write_text("loser", encoding="utf-8")
    final.write_text("winner", encoding="utf-8")
    monkeypatch.setattr(os.path, "lexists", lambda path: False)  # another process creates it right after the check
    with pytest.raises(FileExistsError):
        publish_path(staged, final, replace=False)
    assert final.read_text(encoding="utf-8") == "winner" and staged.read_text(encoding="utf-8") == "loser"


# ----------------------------------------------------------------------------- swapping directories

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux only")


@linux_only
def test_a_failed_exchange_raises_the_system_error(tmp_path: Path) -> None:
    staged, missing = tmp_path / "staged", tmp_path / "missing"
    staged.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        atomic._exchange(staged, missing)
    assert (info.value.errno, info.value.strerror, info.value.filename) == (
        errno.ENOENT, os.strerror(errno.ENOENT), str(missing))
    assert _entries(tmp_path) == ["staged"]


@linux_only
def test_a_directory_is_swapped_in_one_step_by_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # `segflow run -o out` gives relative paths
    _make_dir(tmp_path / "out.zarr", {"old": "1"})
    _make_dir(tmp_path / "staged", {"new": "2"})
    renames: list[str] = []
    real = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        renames.append(str(dst))
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", spy)
    publish_path("staged", "out.zarr")
    assert renames == [] and _read_dir(tmp_path / "out.zarr") == {"new": "2"} and _entries(tmp_path) == ["out.zarr"]


def _refusing(code: int) -> object:
    def renameat2(*args: object) -> int:
        ctypes.set_errno(code)
        return -1
    return renameat2


@pytest.mark.parametrize("renameat2", [None, _refusing(errno.ENOSYS), _refusing(errno.EINVAL),
                                       _refusing(errno.EOPNOTSUPP)],
                         ids=["no-renameat2", "ENOSYS", "EINVAL", "EOPNOTSUPP"])
def test_where_directories_cannot_be_exchanged_the_new_one_still_replaces_the_old(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renameat2: object) -> None:
    monkeypatch.setattr(atomic, "_renameat2", lambda: renameat2)  # another system, or a filesystem that refuses
    target = tmp_path / "pkg"
    _make_dir(target, {"model.yaml": "old"})
    with atomic_path(target) as staging:
        _make_dir(staging, {"model.yaml": "new"})
    assert _read_dir(target) == {"model.yaml": "new"} and _entries(tmp_path) == ["pkg"]


def test_an_old_directory_that_cannot_be_deleted_does_not_fail_the_publication(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "pkg"
    _make_dir(target, {"model.yaml": "old", "busy.bin": "held open on a network share"})
    real = os.unlink

    def unlink(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        if os.path.basename(os.fsdecode(path)) == "busy.bin":
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
        real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(atomic.os, "unlink", unlink)
    with atomic_path(target) as staging:
        _make_dir(staging, {"model.yaml": "new"})
    assert _read_dir(target) == {"model.yaml": "new"}


# ----------------------------------------------------------------------------- fsync

def _fsynced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the inode of everything passed to os.fsync from now on."""
    inodes: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        inodes.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    return inodes


def test_a_written_file_then_its_directory_are_flushed_to_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inodes = _fsynced(monkeypatch)
    target = atomic_write_bytes(tmp_path / "a.bin", b"data")
    assert inodes == [target.stat().st_ino, tmp_path.stat().st_ino]


def test_every_file_and_folder_of_a_published_directory_is_flushed(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    inodes = _fsynced(monkeypatch)
    target = tmp_path / "pkg"
    with atomic_path(target) as staging:
        _make_dir(staging, {"a": "1", "b": "2"})
        _make_dir(staging / "sub", {"c": "3"})
    tree = [target, target / "a", target / "b", target / "sub", target / "sub" / "c"]
    assert sorted(inodes[:-1]) == sorted(p.stat().st_ino for p in tree)
    assert inodes[-1] == tmp_path.stat().st_ino, "then the rename in the parent"


@pytest.mark.parametrize("name", ["é" * 120 + ".json", "a" * 250 + ".txt", "ü" * 127])
def test_a_long_non_ascii_name_that_the_file_system_takes_is_written(tmp_path: Path, name: str) -> None:
    """The temporary sibling's name is cut by bytes (a file name holds 255), never half a character, so every name
    the file system takes directly can be written atomically too."""
    assert len(name.encode()) <= 255
    target = tmp_path / name
    atomic_write_text(target, "x")
    assert target.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == [name]
    sibling = temporary_sibling(target)
    assert len(os.fsencode(sibling.name)) <= 255 and sibling.name.startswith("." + name[:50])
    sibling.write_text("y")  # the file system takes it
