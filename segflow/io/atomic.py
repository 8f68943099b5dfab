"""Atomic publication of single files and directories: write under a temporary name, then rename.

Every writer of segflow goes through this module. The temporary name is a hidden sibling of
the final one (same directory, so the rename is atomic), a reader of the final name sees either
the complete old or the complete new content, and a failed write leaves the old content
untouched and no temporary behind. A directory that replaces a directory is swapped with it
atomically on Linux; elsewhere the old one is first moved aside as ``.segflow-old-<id>-<name>``
(:data:`OLD_PREFIX`), and :mod:`segflow.io.publish` puts such an entry back when a killed run
left the final name missing.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import OutputError, SegflowError
from .space import FULL_ERRNOS, format_bytes

__all__ = [
    "OLD_PREFIX",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "publish_path",
    "temporary_sibling",
]

OLD_PREFIX = ".segflow-old-"
_HINT = "check the directory, its permissions and free space"


_NAME_MAX = 255  # bytes in one file name (Linux, macOS)


def temporary_sibling(path: str | os.PathLike[str]) -> Path:
    """A fresh hidden name ``.{name}.{pid}.{uuid12}.tmp`` in the directory of ``path``.

    Nothing is created. Raises :class:`OutputError` when that directory does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(
            f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist; "
            "expected an existing, writable directory; create it or choose another path"
        )
    tail = f".{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
    room = _NAME_MAX - 1 - len(tail.encode())  # bytes left for the name in a 255-byte file name
    name = os.fsencode(path.name)[:room].decode(errors="ignore")  # never half a character
    return path.with_name(f".{name}{tail}")


def _remove(path: Path) -> None:
    """Delete a file, link or directory tree; missing is fine, failures are ignored."""
    try:
        tree = path.is_dir() and not path.is_symlink()
    except OSError:  # e.g. a name too long to look up: nothing of that name can exist
        return
    if tree:
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Swap the entries ``a`` and ``b`` in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    False where the system or the filesystem cannot (then nothing changed); other errors raise.
    """
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def publish_path(staged: str | os.PathLike[str], final: str | os.PathLike[str], *, replace: bool = True) -> None:
    """Rename ``staged`` onto ``final`` (same directory) atomically; raises the plain :class:`OSError`.

    A file replaces ``final`` with :func:`os.replace`. A directory replacing an existing entry is
    swapped with it in one step where Linux can (``renameat2(RENAME_EXCHANGE)``), after which
    the old entry, now under the staged name, is deleted. Elsewhere the old entry is moved aside
    as ``.segflow-old-<uuid12>-<name>`` first, ``staged`` renamed into place and the old entry
    deleted (``final`` is missing for that instant); if the second rename fails the old entry is
    put back and the error raised.
    With ``replace=False`` an existing ``final`` is never touched: :class:`FileExistsError`
    (or the rename's own error when ``final`` appears meanwhile) is raised instead.
    """
    staged, final = Path(staged), Path(final)
    is_dir = staged.is_dir() and not staged.is_symlink()
    if not replace:
        if os.path.lexists(final):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(final))
        if is_dir:
            os.rename(staged, final)  # fails when a non-empty directory appeared meanwhile
        else:
            os.link(staged, final)  # never clobbers
            os.unlink(staged)
        return
    if not is_dir or not os.path.lexists(final):
        os.replace(staged, final)
        return
    if _exchange(staged, final):  # the new directory in, the old one at the staged name: no gap
        _remove(staged)
        return
    old = final.parent / f"{OLD_PREFIX}{uuid.uuid4().hex[:12]}-{final.name}"
    os.replace(final, old)
    try:
        os.replace(staged, final)
    except BaseException:
        try:
            os.replace(old, final)
        except OSError:
            pass  # left under OLD_PREFIX, where segflow.io.publish.remove_orphans restores it
        raise
    _remove(old)


def _fsync(path: Path) -> None:
    """Flush a file (errors propagate) or, best effort, a directory tree to the disk."""
    if not path.is_dir() or path.is_symlink():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return
    for root, _, files in os.walk(path):
        for name in [*files, "."]:
            _fsync_dir(Path(root) / name)


def _fsync_dir(path: Path) -> None:
    """Best effort: flush ``path`` (a directory: make a rename in it durable; or a file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _output_error(path: Path, exc: OSError, hint: str) -> OutputError:
    """One line: which path, the OS reason and, for a full disk, the space left there."""
    reason = " ".join((exc.strerror or str(exc) or type(exc).__name__).split())
    if exc.errno in FULL_ERRNOS:
        try:
            free = shutil.disk_usage(path.parent).free
            reason += f" ({format_bytes(free)} free in {path.parent})"
        except OSError:
            pass
    error = OutputError(f"cannot write {path}: {reason}; {hint}")
    error.errno = exc.errno
    return error


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, hint: str = _HINT) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` for the caller to create (a file or a directory).

    On normal exit the temporary is flushed to disk and published onto ``path`` with
    :func:`publish_path`. On any exception the temporary is removed; an :class:`OSError` from
    the body or from publishing becomes :class:`OutputError` (``"cannot write <path>: <reason>;
    <hint>"``, with the free space for a full disk), other exceptions propagate unchanged.
    """
    final = Path(path)
    temp = temporary_sibling(final)
    try:
        yield temp
        _fsync(temp)
        publish_path(temp, final)
    except BaseException as exc:
        _remove(temp)
        if isinstance(exc, OSError) and not isinstance(exc, SegflowError):
            raise _output_error(final, exc, hint) from exc
        raise
    _fsync_dir(final.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, hint: str = _HINT) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`) and return the path."""
    final = Path(path)
    with atomic_path(final, hint=hint) as temp, open(temp, "xb") as f:
        f.write(data)
    return final


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8",
                      hint: str = _HINT) -> Path:
    """Write ``text`` to ``path`` atomically, newlines untranslated, and return the path."""
    return atomic_write_bytes(path, text.encode(encoding), hint=hint)
