"""Which failures are worth another attempt, and how long to wait before it.

Transient: the target or the machine was briefly unavailable. A PACS or database that is down or
drops the connection (a :class:`~segflow.errors.DeliveryError`, unless the target answered and
refused), an I/O error that is not segflow's own verdict on the output (an ``OSError`` other than
:class:`~segflow.errors.OutputError` and missing or forbidden paths), a timeout, a dask worker that
died or a connection to it that closed. Another attempt continues where the last one stopped:
finished chunks and confirmed deliveries are not done again.

Permanent: everything segflow says is wrong with the input, the configuration, the model, the output
location or the device (the other :class:`~segflow.errors.SegflowError`), and bugs. Retrying those
cannot help, so the item fails at once with its message, and the batch goes on.
"""

from __future__ import annotations

from ..errors import DeliveryError, SegflowError

__all__ = ["backoff", "is_transient"]

_TRANSIENT_NAMES = {"KilledWorker", "CommClosedError", "StreamClosedError", "FutureCancelledError",
                    "CancelledError"}


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or the exception it was raised from) is a transient failure (see the module docstring)."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DeliveryError):
            return current.transient
        if isinstance(current, SegflowError):
            return False
        if isinstance(current, (ConnectionError, TimeoutError)) or type(current).__name__ in _TRANSIENT_NAMES:
            return True
        if isinstance(current, OSError) and not isinstance(current, (FileNotFoundError, PermissionError,
                                                                      IsADirectoryError, NotADirectoryError)):
            return True
        current = current.__cause__ or current.__context__
    return False


def backoff(retries: int, first: float, factor: float = 2.0, cap: float = 600.0) -> list[float]:
    """The pauses before each of ``retries`` attempts: ``first``, then ``factor`` times longer each time, at most
    ``cap`` seconds."""
    if retries < 0 or first < 0:
        raise ValueError(f"retries and the first pause must be >= 0, got {retries} and {first}")
    return [min(cap, first * factor**n) for n in range(retries)]
