"""Disk space: estimate what a run writes, refuse early when it clearly cannot fit, report a full disk in one line.

A full disk shows up in many shapes: an ``OSError`` with ``ENOSPC`` from Python's own writes
(zarr, JSON records), a GDAL error whose text says nothing about space ("IO error writing
tag data"), or nothing at all — libtiff prints "No space left on device" on the process's
standard error and GDAL's multi-threaded COG writer can return success with a truncated
file. :func:`guard_writes` turns every one of these into one :class:`~segflow.errors.OutputError`
(exit 4) that says where, how much was free and roughly how much is needed;
:func:`native_stderr` captures what C libraries print while a GDAL writer runs, so those
messages are recognised instead of reaching the user's terminal.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError, SegflowError

__all__ = ["check_space", "estimate_bytes", "format_bytes", "free_bytes", "guard_writes", "is_disk_full",
           "native_stderr", "space_error", "tree_bytes"]

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
FULL_TEXTS = ("no space left on device", "disk quota exceeded", "file too large")

# Bytes per pixel of a deflate/zstd-compressed label map, measured on segflow's outputs: 0.036 for the
# synthetic demo scene (smooth classes), 0.1-0.3 for label maps of real scenes with speckle. One copy
# lives in mask.zarr, and while labels.tif is built a raw tiled GeoTIFF and the COG exist side by side.
LABEL_BYTES_PER_PIXEL = 0.1
LABEL_COPIES = 3
SCORE_BYTES_PER_VALUE = 0.5  # float16 scores: 2 bytes raw, compressed 4x or more
OVERHEAD_BYTES = 64 << 10  # run.json, completion records, zarr metadata, the staging folder
CLEARLY = 4  # refuse up front only when free space is below a quarter of the estimate


def format_bytes(n: float) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def free_bytes(folder: str | os.PathLike[str]) -> int | None:
    """Bytes free to this user in the filesystem holding ``folder`` (or its nearest existing parent)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def estimate_bytes(spatial_shape: Sequence[int], num_classes: int, save_scores: bool, *, label_planes: int = 1
                   ) -> int:
    """Roughly how many bytes a run writes into its output folder at its peak (see the constants above).

    ``label_planes``: label maps per pixel (a multi-label model stores and exports one per class).
    """
    pixels = math.prod(int(s) for s in spatial_shape)
    labels = pixels * LABEL_BYTES_PER_PIXEL * LABEL_COPIES * max(1, label_planes)
    scores = pixels * num_classes * SCORE_BYTES_PER_VALUE if save_scores else 0
    return int(labels + scores + OVERHEAD_BYTES)


def tree_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _no_inodes(folder: str | os.PathLike[str]) -> bool:
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_files > 0 and st.f_favail == 0


def space_error(folder: str | os.PathLike[str], needed: int | None = None, what: str = "the outputs"
                ) -> OutputError:
    """The one-line error for a full disk under ``folder``: where, how much is free, roughly how much is needed."""
    if _no_inodes(folder):
        return OutputError(f"cannot write {what} in {folder}: its filesystem has no free inodes (room for new files) "
                           "left; remove files there or choose another --output (nothing was published, earlier "
                           "outputs are unchanged)")
    free = free_bytes(folder)
    have = f"{format_bytes(free)} free" if free is not None else "free space unknown"
    need = f", roughly {format_bytes(needed)} needed" if needed else ""
    return OutputError(f"not enough disk space to write {what} in {folder}: {have}{need}; free some space or "
                       "choose another --output (nothing was published, earlier outputs are unchanged)")


def check_space(folder: str | os.PathLike[str], needed: int, what: str = "the outputs") -> None:
    """Refuse with one line when ``folder`` clearly has too little space for ``needed`` bytes."""
    if needed <= 0:
        return
    free = free_bytes(folder)
    if free is not None and free * CLEARLY < needed:
        raise space_error(folder, needed, what)


def is_disk_full(exc: BaseException | None, messages: str = "") -> bool:
    """True when ``exc`` (or what it was raised from) or the captured native ``messages`` say the disk is full."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FULL_ERRNOS:
            return True
        if any(t in str(current).lower() for t in FULL_TEXTS):
            return True
        current = current.__cause__ or current.__context__
    return any(t in messages.lower() for t in FULL_TEXTS)


class _Captured:
    def __init__(self) -> None:
        self.text = ""


@contextmanager
def native_stderr() -> Iterator[_Captured]:
    """Capture what C libraries (libtiff, GDAL's default handler) write to file descriptor 2 meanwhile.

    The text is available on the yielded object after the block. Python's own ``sys.stderr`` is
    flushed first; when the block ends normally, captured text that is not about a full disk is
    written back to the real standard error so that no warning is lost.
    """
    captured = _Captured()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (a daemon): nothing to capture
        yield captured
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        sys.stderr.flush()
        os.dup2(sink.fileno(), 2)
        ok = False
        try:
            yield captured
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "replace")
            if ok and captured.text and not any(t in captured.text.lower() for t in FULL_TEXTS):
                os.write(2, captured.text.encode())


@contextmanager
def guard_writes(folder: str | os.PathLike[str], needed: int | None = None, what: str = "the outputs"
                 ) -> Iterator[None]:
    """Turn a full disk met in the block into one :class:`OutputError` about ``folder``.

    Other exceptions, and segflow's own errors, pass through unchanged.
    """
    try:
        yield
    except SegflowError as exc:
        if isinstance(exc, OutputError) and getattr(exc, "errno", None) in FULL_ERRNOS:
            raise space_error(folder, needed, what) from None
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise space_error(folder, needed, what) from None
        raise
