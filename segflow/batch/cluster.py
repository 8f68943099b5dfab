"""One dask cluster for a whole batch: started once, used by every item's run, closed at the end.

Starting worker processes (and importing torch in each) costs seconds; a night of many small items
would pay it per item. The items' runs reach the batch's cluster by its address, exactly like a run
on a running cluster (``--dask-address``); each run loads its model on the workers once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..engine import Execution
from ..engine.execute import start_local_cluster
from ..errors import ConfigError

__all__ = ["batch_execution"]


@contextmanager
def batch_execution(workers: int | None, device: str = "auto", address: str | None = None) -> Iterator[Execution]:
    """Where a batch's items run: threads here (``workers`` None or 0), a local cluster of ``workers`` processes
    started for the batch, or the running cluster at ``address``."""
    if workers and address:
        raise ConfigError("give either --workers (a local cluster) or --dask-address (a running one), not both")
    if workers is not None and workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}; e.g. --workers 4")
    if address or not workers:
        yield Execution(address=address)
        return
    from ..predict import resolve_device

    cluster = start_local_cluster(workers, resolve_device(device).type == "cuda")
    try:
        yield Execution(address=cluster.scheduler_address)
    finally:
        cluster.close()
