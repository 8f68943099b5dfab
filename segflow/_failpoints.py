"""Crash injection for tests of resumption: ``SEGFLOW_FAILPOINT=NAME[:N]`` kills the process at a point.

A named point kills the process (SIGKILL, no clean-up) the N-th time it is reached (default
the first); ``SEGFLOW_FAILPOINT_ONCE=PATH`` limits that to the
first process that gets there. Unset, a failpoint costs one dictionary lookup. Used by the tests that prove a run
killed at any moment resumes to the same result; never set it in production.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

__all__ = ["failpoint"]

_hits: Counter[str] = Counter()


def failpoint(name: str) -> None:
    spec = os.environ.get("SEGFLOW_FAILPOINT")
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] >= int(count or 1) and _first_to_fire():
        os.kill(os.getpid(), signal.SIGKILL)


def _first_to_fire() -> bool:
    """With ``SEGFLOW_FAILPOINT_ONCE=PATH``, only the process that creates PATH first fires (once among all the
    processes of a test, e.g. the worker processes of a cluster); without it, every process fires."""
    marker = os.environ.get("SEGFLOW_FAILPOINT_ONCE")
    if not marker:
        return True
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
