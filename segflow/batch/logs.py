"""Prefect's logs of a batch: a failure of segflow's own is one line, not a traceback.

Prefect logs every failed task and flow run with its traceback. For the errors segflow raises on
purpose (bad input, a target down), whose messages say what was wrong and what to do, that
traceback is noise that hides the line an operator needs; for any other exception (a bug) it is
kept.
"""

from __future__ import annotations

import logging

from ..errors import SegflowError

__all__ = ["one_line_errors"]

_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class _OneLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, SegflowError) or (exc is not None and isinstance(exc.__cause__, SegflowError)):
            record.exc_info, record.exc_text = None, None
        return True


def one_line_errors() -> None:
    """Drop the tracebacks of segflow's own errors from Prefect's flow- and task-run logs (idempotent)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OneLine) for f in logger.filters):
            logger.addFilter(_OneLine())
