"""One run at a time per output folder: an advisory lock that dies with its process.

The lock is ``fcntl.flock`` on ``<output>/.segflow.lock``, which the kernel releases when the
holding process ends in any way (SIGKILL and out-of-memory kills included), so a lock left by
a dead process is simply taken over. The file records the holder (host, pid, start time) for
the message a second run gets. It is removed when the run ends; a waiter that locked a file
just removed notices (the path no longer names the file it holds) and tries again.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from ..errors import OutputError

__all__ = ["LOCK_NAME", "OutputLock"]

LOCK_NAME = ".segflow.lock"


class OutputLock:
    """Hold the output folder's lock for the duration of a ``with`` block.

    Raises :class:`OutputError` naming the running holder when another live process has it.
    """

    def __init__(self, output: str | os.PathLike[str]):
        self.path = Path(output) / LOCK_NAME
        self.fd: int | None = None

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
            return f"host {info['host']}, pid {info['pid']}, started {started}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def acquire(self) -> None:
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"cannot create the lock file {self.path} ({exc.strerror}); "
                                  "choose a writable --output") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputError(f"output {self.path.parent} is in use by another segflow run ({self._holder()}); "
                                  "wait for it to finish or choose another --output") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder removed the file after we opened it: lock the new one
                os.close(fd)
                continue
            record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode(), 0)
            self.fd = fd
            return
        raise OutputError(f"could not lock {self.path}: it keeps being replaced; is another run starting there?")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # closing releases the lock
            self.fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
