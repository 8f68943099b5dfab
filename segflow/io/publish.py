"""Atomic publication of outputs: build everything in a staging folder, then rename into place.

A failed run leaves the output folder as it was: earlier good outputs are never damaged and
nothing half-written appears under the final names. Publishing several entries first writes a
journal (``publish.json``) into the staging folder, then renames the entries one by one
(:func:`segflow.io.atomic.publish_path`). A run killed outright (out of memory, SIGKILL, power
loss) cannot clean up after itself; the next run into the same folder
(:func:`recover`) first completes any publication whose journal was written — those outputs
were complete — then removes staging folders whose owning process is gone and puts back an
earlier output that was moved aside when the kill came between the two renames that replace it.

A staging folder may have a fixed name (a resumable run keeps its work there between
attempts); such a folder is kept when the run fails, for the next attempt to continue.
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

from .._failpoints import failpoint
from ..errors import OutputError
from .atomic import OLD_PREFIX, atomic_write_text, publish_path

__all__ = ["JOURNAL", "OLD_PREFIX", "STAGING_PREFIX", "Staging", "recover", "remove_orphans"]


def prepare_output(output: Path) -> None:
    """Create the output folder, or refuse with one line when it cannot be one."""
    if output.exists() and not output.is_dir():
        raise OutputError(f"output {output} exists and is not a directory; choose a directory for --output")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create output directory {output} ({exc.strerror}); choose another --output"
        ) from None


STAGING_PREFIX = ".segflow-staging-"
OWNER = "owner.json"
JOURNAL = "publish.json"
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


def _finish_journal(staging: Path) -> bool:
    """Complete the publication a killed run started; True when ``staging`` had a journal."""
    try:
        record = json.loads((staging / JOURNAL).read_text(encoding="utf-8"))
        names, ids = record["names"], record.get("ids", {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    for name in names:
        staged, final = staging / name, staging.parent / name
        if not os.path.lexists(staged):
            continue
        if name in ids and _identity(final) == tuple(ids[name]):
            continue  # already swapped in: the staged name holds the replaced entry, removed below
        publish_path(staged, final)
    shutil.rmtree(staging, ignore_errors=True)
    return True


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of ``path`` itself, or None when it does not exist."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def recover(output: Path, keep: tuple[str, ...] = ()) -> list[Path]:
    """Clean up after killed runs into ``output``: finish their publications, then remove their debris.

    Call it while holding the output's lock (:class:`~segflow.io.lock.OutputLock`): then no
    other run is publishing here. Staging folders named in ``keep`` (a resumable run's own
    folder) are not removed, but a publication they journaled is completed like any other.
    """
    touched = []
    for staging in sorted(output.glob(STAGING_PREFIX + "*")):
        if staging.is_dir() and _orphaned(staging) and _finish_journal(staging):
            touched.append(staging)
    return touched + remove_orphans(output, keep)


def remove_orphans(output: Path, keep: tuple[str, ...] = ()) -> list[Path]:
    """Clean up after runs into ``output`` that were killed; returns what was removed or restored.

    An output moved aside as ``.segflow-old-<id>-<name>`` whose final ``<name>`` is missing
    was interrupted mid-replacement: it is renamed back. Staging folders of dead runs and
    moved-aside outputs that were replaced are deleted.
    """
    touched = []
    live = False
    for staging in sorted(output.glob(STAGING_PREFIX + "*")):
        if not staging.is_dir() or staging.name in keep:
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
    """A hidden staging folder inside ``output``; :meth:`publish` renames its entries into place.

    ``name`` gives the folder a fixed name (``.segflow-staging-<name>``) that a later attempt
    finds again; with ``keep_on_error`` the folder survives a failed run. The caller that uses
    a fixed name holds the output's lock and has run :func:`recover` itself.
    """

    def __init__(self, output: str | os.PathLike[str], name: str | None = None, *, keep_on_error: bool = False):
        self.output = Path(output)
        self.keep_on_error = keep_on_error
        prepare_output(self.output)
        if name is None:
            remove_orphans(self.output)
        self.path = self.output / f"{STAGING_PREFIX}{name or uuid.uuid4().hex[:12]}"
        created = not self.path.exists()
        try:
            self.path.mkdir(exist_ok=name is not None)
            owner = {"pid": os.getpid(), "space": _process_space(), "started": time.time()}
            atomic_write_text(self.path / OWNER, json.dumps(owner))
        except OSError as exc:
            if created:
                shutil.rmtree(self.path, ignore_errors=True)
            if isinstance(exc, OutputError):
                raise
            raise OutputError(
                f"cannot write to output directory {self.output} ({exc.strerror}); choose a writable --output"
            ) from None

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None or not self.keep_on_error:
            self.discard()

    def publish(self, names: list[str]) -> dict[str, Path]:
        """Move the staged entries ``names`` to ``output``, in that order, each atomically.

        A journal is written first, so a run killed between two renames has its publication
        completed by the next run (:func:`recover`) instead of leaving a mix of old and new.
        """
        # the identity of each staged entry tells a later recovery which ones were already swapped in
        ids = {name: _identity(self.path / name) for name in names}
        atomic_write_text(self.path / JOURNAL, json.dumps({"names": list(names), "ids": ids}))
        done = {}
        for n, name in enumerate(names):
            if n:
                failpoint("publish")
            try:
                publish_path(self.path / name, self.output / name)
            except OSError as exc:
                self.keep_on_error = True  # the journal's next run completes this publication from the staging
                raise OutputError(f"cannot publish {self.output / name} ({exc.strerror or exc}); the staged outputs "
                                  f"stay in {self.path} and the next run into {self.output} completes the "
                                  "publication") from None
            done[name] = self.output / name
        self.discard()
        return done

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
