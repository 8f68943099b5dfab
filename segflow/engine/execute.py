"""Run a plan as one dask graph on threads, a local cluster of worker processes, or a remote cluster.

The graph has three kinds of tasks per chunk: ``eval`` (read the region, run the chunk's
windows), ``part`` (one per target chunk: pick what that chunk needs out of an evaluation, so on
a cluster only those bytes move) and ``merge`` (sum the parts, label, write the store, record the
chunk as complete). The merges are the graph's only outputs; each evaluation reports which
windows it ran through one of its parts.
"""

from __future__ import annotations

import ast
import functools
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .. import errors
from ..errors import ConfigError, DeviceError, SegflowError
from ..scene import Scene
from . import spill
from .plan import ChunkTask, Index, Plan, merge_axes
from .tasks import RunSpec, evaluate_chunk, merge_and_store, part_for

__all__ = ["Execution", "Outcome", "run_plan", "start_local_cluster"]

OnChunk = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Execution:
    """Where the tasks run.

    ``workers``: None or 0 runs threads in this process; N starts a local cluster of N worker
    processes for the run. ``address``: a running dask.distributed scheduler
    (``tcp://host:8786``) to use instead. On a cluster, evaluation tasks of a CUDA run ask for the
    resource ``GPU`` (start GPU workers with ``--resources GPU=1``), so each GPU runs one
    inference task at a time.
    ``threads``: task threads in this process (default: 1 on the CPU, where torch already uses
    every core inside each operation; one per core with a GPU).
    """

    workers: int | None = None
    address: str | None = None
    threads: int | None = None  # None: 1 on the CPU, one per core with a GPU

    def check(self) -> None:
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}; e.g. --workers 4")
        if self.workers and self.address:
            raise ConfigError("give either --workers (a local cluster) or --dask-address (a running one), not both")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.address:
            _check_address(self.address)

    @property
    def distributed(self) -> bool:
        return bool(self.workers) or bool(self.address)

    @property
    def kind(self) -> str:
        if self.address:
            return "cluster"
        return "processes" if self.workers else "threads"


def _check_address(address: str) -> None:
    """Refuse a malformed scheduler address before anything runs (a Client that failed to parse it lingers)."""
    from distributed.comm.addressing import get_address_host_port, parse_address

    try:
        if parse_address(address)[0] != "inproc":
            get_address_host_port(address)
    except ValueError as exc:
        raise ConfigError(f"--dask-address {address!r} is not a dask scheduler address ({exc}); give one like "
                          "tcp://scheduler:8786") from None


@dataclass
class Outcome:
    """What the graph returned: one completion record per merged chunk and the evaluation counts."""

    records: dict[Index, dict[str, Any]]
    evaluated: list[Index]
    skipped: int
    workers: dict[str, Any]


def _graph(plan: Plan, scene: Any, run: RunSpec, token: str, *, chain: bool = False
           ) -> tuple[dict[Any, Any], list[Any]]:
    """The tasks of ``plan``; with ``chain`` each merge waits for the previous one in :func:`merge_order`.

    The chain is for the threaded scheduler, whose own ordering otherwise lets evaluations run up
    to two lines of chunks ahead of the merges (and their seams wait meanwhile); a cluster gets
    the same effect from task priorities instead. With ``chain`` and ``run.spill``, parts that
    wait for more than a line of chunks are written there (:mod:`segflow.engine.spill`).
    """
    def key(kind: str, *index: int) -> tuple[Any, ...]:
        return (f"segflow-{kind}-{token}", *index)

    position = {t.index: n for n, t in enumerate(_in_merge_order(plan, plan.tasks))}
    line = plan.chunks.counts[merge_axes(plan.chunks.counts)[-1]]

    def spill_to(source: Index, target: Index) -> str | None:
        if not chain or run.spill is None or not spill.far_apart(position[source], position[target], line):
            return None
        return str(run.spill / f"{'-'.join(map(str, source))}_{'-'.join(map(str, target))}.part")

    dsk: dict[Any, Any] = {}
    for task in plan.evaluations:
        dsk[key("eval", *task.index)] = (evaluate_chunk, scene, task, run)
        for n, target in enumerate(task.targets):
            dsk[key("part", *task.index, *target)] = (part_for, key("eval", *task.index), target, n == 0,
                                                      run.hand_over, spill_to(task.index, target))
    merges: list[Any] = []
    for task in merge_order(plan) if chain else plan.merged:
        parts = [key("part", *source, *task.index) for source in task.sources]
        after = merges[-1] if chain and merges else None
        dsk[key("merge", *task.index)] = (merge_and_store, task, parts, run, after)
        merges.append(key("merge", *task.index))
    return dsk, merges


def merge_order(plan: Plan) -> list[ChunkTask]:
    """The merged chunks in raster order over the axes sorted from most to fewest chunks.

    Parts wait for their merge along the fast axis, so the seams held at once are those of
    about one line of chunks along it: making it the axis with the fewest chunks keeps that
    line short (a 2 × 32 chunk scene walks down its columns).
    """
    return _in_merge_order(plan, plan.merged)


def _in_merge_order(plan: Plan, tasks: Iterable[ChunkTask]) -> list[ChunkTask]:
    axes = merge_axes(plan.chunks.counts)
    return sorted(tasks, key=lambda t: tuple(t.index[a] for a in axes))


def _outcome(merge_results: list[dict[str, Any]], workers: dict[str, Any]) -> Outcome:
    records = {tuple(r["index"]): {k: v for k, v in r.items() if k != "evaluations"} for r in merge_results}
    counts = [c for r in merge_results for c in r["evaluations"]]
    evaluated = [tuple(i) for c in counts for i in c["evaluated"]]
    return Outcome(records, evaluated, sum(c["skipped"] for c in counts), workers)


def _run_threads(plan: Plan, scene: Scene, run: RunSpec, execution: Execution, on_chunk: OnChunk,
                 token: str, cuda: bool) -> Outcome:
    from dask.callbacks import Callback
    from dask.threaded import get

    dsk, merges = _graph(plan, scene, run, token, chain=True)
    merge_names = {k[0] for k in merges}

    class _Progress(Callback):
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            if isinstance(key, tuple) and key[0] in merge_names:
                on_chunk(result)

    threads = execution.threads or _default_threads(cuda)
    with _Progress():
        results = get(dsk, merges, num_workers=threads)
    return _outcome(list(results), {"kind": "threads", "threads": threads})


def _default_threads(cuda: bool) -> int:
    """Task threads in this process: on the CPU one (torch already spreads each operation over every
    core, and a second task thread only holds a second chunk in memory: 1.56 GB against 2.19 GB
    peak on a 16384² scene at chunk 4096, same wall time); with a GPU one per core, so reading and
    merging overlap the GPU's work."""
    return (os.cpu_count() or 1) if cuda else 1


def _existing_client(address: str) -> Any:
    """A client this process already holds for ``address`` (two clients in one process share no event loop)."""
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:
        return None
    return client if client.scheduler is not None and client.scheduler.address == address else None


def _client(execution: Execution, cuda: bool) -> tuple[Any, Any, bool]:
    """A client for the run, the local cluster started for it (or None), and whether to close the client."""
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is a core dependency
        raise ConfigError("worker processes and clusters need dask.distributed: pip install distributed") from None
    if execution.address:
        existing = _existing_client(execution.address)
        if existing is not None:
            return existing, None, False
        try:
            client = Client(execution.address, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach the dask scheduler at {execution.address} ({exc}); check the address "
                              "and that the scheduler is running") from None
        return client, None, True
    cluster = start_local_cluster(int(execution.workers or 1), cuda)
    return Client(cluster), cluster, True


_environ_lock = threading.Lock()
_environ_kept: dict[str, Any] = {"users": 0, "saved": {}}


@contextmanager
def nanny_environment_kept() -> Iterator[None]:
    """Put back, on leaving, the variables distributed's nanny sets in this process's environment to pass them to
    its workers (OMP_NUM_THREADS=1, ...) and leaves there, so that this process and what it starts later keep
    their own threads. Nested and concurrent uses share one saved copy: the last to leave puts it back."""
    import dask
    import distributed  # noqa: F401  (registers the nanny's configuration)

    with _environ_lock:
        if _environ_kept["users"] == 0:
            keys = dask.config.get("distributed.nanny.pre-spawn-environ", {})
            _environ_kept["saved"] = {str(k): os.environ.get(str(k)) for k in keys}
        _environ_kept["users"] += 1
    try:
        yield
    finally:
        with _environ_lock:
            _environ_kept["users"] -= 1
            if _environ_kept["users"] == 0:
                for key, value in _environ_kept["saved"].items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value


@functools.cache
def kept_environment_nanny() -> type:
    """distributed's Nanny, starting each worker process (the first time, and again after a crash) with its
    variables set only while it spawns; give it as ``worker_class`` to a LocalCluster."""
    from distributed import Nanny

    class KeptEnvironmentNanny(Nanny):
        async def instantiate(self) -> Any:
            with nanny_environment_kept():
                return await super().instantiate()

    return KeptEnvironmentNanny


def start_local_cluster(workers: int, cuda: bool) -> Any:
    """A dask LocalCluster of ``workers`` processes on this machine sharing its cores (each declaring one ``GPU``
    resource when ``cuda``), bound to 127.0.0.1, without a dashboard; the caller closes it. Its nannies leave
    this process's environment as it was, also when they restart a worker that died."""
    from distributed import LocalCluster

    threads = max(1, (os.cpu_count() or 1) // workers)
    return LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, host="127.0.0.1",
                        dashboard_address=None, resources={"GPU": 1} if cuda else None,
                        worker_class=kept_environment_nanny(),
                        silence_logs=logging.CRITICAL)  # a task's error reaches the caller as one line


def _check_gpu_workers(client: Any) -> None:
    info = client.scheduler_info()
    if not any(w.get("resources", {}).get("GPU") for w in info.get("workers", {}).values()):
        raise DeviceError("this run uses CUDA but no worker of the cluster declares a GPU; start GPU workers with "
                          "`dask worker ADDRESS --resources GPU=1` (one per GPU), or run with --device cpu")


def _identity(value: Any) -> Any:
    return value


def _run_distributed(plan: Plan, scene: Scene, run: RunSpec, execution: Execution, on_chunk: OnChunk,
                     token: str, cuda: bool) -> Outcome:
    from distributed import as_completed

    client, cluster, owned = _client(execution, cuda)
    try:
        if cuda:
            _check_gpu_workers(client)
        # A task, not scattered data: if the worker holding it dies, the scheduler recomputes it.
        scene_future = client.submit(_identity, scene, key=f"segflow-scene-{token}", pure=False)
        dsk, merges = _graph(plan, scene_future, run, token)
        position = {t.index: n for n, t in enumerate(plan.tasks)}
        futures: dict[Any, Any] = {}
        for key, (func, *args) in dsk.items():  # dict order is topological: evals, parts, then merges
            args = [futures[a] if isinstance(a, tuple) and a in futures else
                    [futures[x] for x in a] if isinstance(a, list) else a for a in args]
            chunk = tuple(key[1:1 + plan.grid.ndim])
            is_eval = func is evaluate_chunk
            # earlier chunks first; a chunk's merge before the next chunk's evaluation (frees memory sooner)
            priority = -2 * position[chunk] + (0 if is_eval else 1)
            futures[key] = client.submit(func, *args, key=key, pure=False, priority=priority,
                                         resources={"GPU": 1} if (cuda and is_eval) else None)
        merge_futures = [futures[k] for k in merges]
        for future in as_completed(merge_futures):
            on_chunk(_result(future))
        info = client.scheduler_info()
        workers = {"kind": execution.kind, "address": info.get("address"),
                   "workers": len(info.get("workers", {})),
                   "threads": sum(w.get("nthreads", 0) for w in info.get("workers", {}).values())}
        return _outcome([_result(f) for f in merge_futures], workers)
    finally:
        if owned:
            client.close()
        if cluster is not None:
            cluster.close()


def run_plan(plan: Plan, scene: Scene, run: RunSpec, execution: Execution, *, on_chunk: OnChunk | None = None,
             cuda: bool = False) -> Outcome:
    """Run every evaluation and merge of ``plan``; ``on_chunk(record)`` is called as each chunk completes."""
    execution.check()
    token = run.fingerprint[:16]
    callback = on_chunk or (lambda record: None)
    if execution.distributed:
        return _run_distributed(plan, scene, run, execution, callback, token, cuda)
    return _run_threads(plan, scene, run, execution, callback, token, cuda)


_WRAPPED = re.compile(r"^(?P<name>[A-Za-z]+Error)\((?P<message>'.*'|\".*\")\)$", re.S)


def _result(future: Any) -> Any:
    """``future.result()``, with segflow's own error restored when dask.distributed could only send its repr.

    A worker's exception whose traceback cannot be pickled arrives as ``Exception("InputError('...')")``;
    it is turned back into the :class:`~segflow.errors.SegflowError` it was, so the CLI prints its one
    line and exit code instead of an internal error.
    """
    try:
        return future.result()
    except SegflowError:
        raise
    except Exception as exc:
        match = _WRAPPED.match(str(exc)) if type(exc) is Exception and len(exc.args) == 1 else None
        cls = getattr(errors, match["name"], None) if match else None
        if match and isinstance(cls, type) and issubclass(cls, SegflowError):
            raise cls(ast.literal_eval(match["message"])) from None
        raise
