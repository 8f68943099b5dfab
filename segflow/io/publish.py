"""Atomic publication of outputs: build everything in a staging folder, then rename into place.

A failed run leaves the output folder as it was: earlier good outputs are never damaged and
nothing half-written appears under the final names. A run killed outright (out of memory,
SIGKILL, power loss) cannot clean up after itself; the next run into the same folder removes
what it left — staging folders whose owning process is gone — and puts back an earlier
output that was moved aside when the kill came between the two renames that replace it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from types import TracebackType

from ..errors import OutputError

__all__ = ["Staging", "remove_orphans"]


def _prepare(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise OutputError(f"output {output} exists and is not a directory; choose a directory for --output")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create output directory {output} ({exc.strerror}); choose another --output"
        ) from None


STAGING_PREFIX = ".segflow-staging-"
OLD_PREFIX = ".segflow-old-"
OWNER = "owner.json"
ORPHAN_AGE_S = 24 * 3600  # a staging folder without an owner record is left alone this long


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _process_space() -> str:
    """This host and PID namespace: where a PID names one process (containers share hostnames)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()} {namespace}".strip()


def _orphaned(staging: Path) -> bool:
    """True when the run that made ``staging`` cannot be running any more.

    Only a run from this host and PID namespace can be known dead; a folder without an owner
    record counts as orphaned once it has not changed for :data:`ORPHAN_AGE_S`.
    """
    try:
        owner = json.loads((staging / OWNER).read_text(encoding="utf-8"))
        pid, space = int(owner["pid"]), str(owner["space"])
    except (OSError, ValueError, KeyError, TypeError):
        try:
            return time.time() - staging.stat().st_mtime > ORPHAN_AGE_S
        except OSError:
            return False
    return space == _process_space() and not _alive(pid)


def remove_orphans(output: Path) -> list[Path]:
    """Clean up after runs into ``output`` that were killed; returns what was removed or restored.

    An output moved aside as ``.segflow-old-<id>-<name>`` whose final ``<name>`` is missing
    was interrupted mid-replacement: it is renamed back. Staging folders of dead runs and
    moved-aside outputs that were replaced are deleted.
    """
    touched = []
    live = False
    for staging in sorted(output.glob(STAGING_PREFIX + "*")):
        if not staging.is_dir():
            continue
        if _orphaned(staging):
            shutil.rmtree(staging, ignore_errors=True)
            touched.append(staging)
        else:
            live = True
    if live:  # another run into this folder may be between its two renames right now
        return touched
    for entry in sorted(output.glob(OLD_PREFIX + "*")):
        final = output / entry.name[len(OLD_PREFIX):].split("-", 1)[-1]
        try:
            if not final.exists():
                os.replace(entry, final)
            elif entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
        touched.append(entry)
    return touched


class Staging:
    """A hidden staging folder inside ``output``; :meth:`publish` renames its entries into place."""

    def __init__(self, output: str | os.PathLike[str]):
        self.output = Path(output)
        _prepare(self.output)
        remove_orphans(self.output)
        self.path = self.output / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        try:
            self.path.mkdir()
            owner = {"pid": os.getpid(), "space": _process_space(), "started": time.time()}
            (self.path / OWNER).write_text(json.dumps(owner), encoding="utf-8")
        except OSError as exc:
            raise OutputError(
                f"cannot write to output directory {self.output} ({exc.strerror}); choose a writable --output"
            ) from None

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.discard()

    def publish(self, names: list[str]) -> dict[str, Path]:
        """Move the staged entries ``names`` to ``output``, in that order, each atomically."""
        done = {}
        for name in names:
            staged, final = self.path / name, self.output / name
            if staged.is_dir() and final.exists():
                old = self.output / f"{OLD_PREFIX}{uuid.uuid4().hex[:12]}-{name}"
                os.replace(final, old)
                os.replace(staged, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staged, final)
            done[name] = final
        return done

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
