"""The nightly batch flow: every item of an inbox through tile-infer, delivery and the night's report.

Wiring only: each step is one call into :mod:`segflow.batch`. Items are run one after another (an
item's chunks already spread over every core, worker or GPU of the run's execution, so a GPU never
runs two inference tasks at once); each item's delivery is submitted as soon as its outputs are
published and runs beside the next item's inference. A transient failure (a database or PACS that
is down, an I/O error, a lost worker) is retried with exponential backoff, continuing where the last
attempt stopped; a permanent one (bad input) fails that item at once and the others go on. The
report is published as a Prefect markdown artifact and written to ``report.md`` / ``report.json``.

``segflow batch`` runs this flow from the command line. Deployments: ``prefect.yaml``.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFuture
from prefect.runtime import task_run

from segflow.batch import (
    BatchReport,
    BatchSettings,
    Item,
    ItemReport,
    backoff,
    batch_settings,
    deliver_item,
    discover,
    infer_item,
    is_transient,
    one_line,
    scrub,
    summarize,
    write_report,
)
from segflow.batch.cluster import batch_execution
from segflow.batch.inbox import waiting
from segflow.batch.logs import one_line_errors
from segflow.batch.settings import check_folders
from segflow.engine import Execution
from segflow.io.lock import OutputLock


def _transient(task: Any, run: Any, state: Any) -> bool:
    """Prefect's retry condition: retry only a transient failure (segflow.batch.is_transient)."""
    data = state.data
    if not isinstance(data, BaseException):
        data = state.result(raise_on_failure=False)
    return isinstance(data, BaseException) and is_transient(data)


@task(name="discover-inbox")
def discover_task(inbox: str, patterns: list[str] | None, min_age: float, output: str) -> tuple[list[Item], list[Item]]:
    found = tuple(patterns) if patterns else ()
    return (discover(inbox, found, min_age=min_age, exclude=[output]),
            waiting(inbox, found, min_age=min_age, exclude=[output]))


@task(name="infer-item", task_run_name="infer-{item.name}", retry_condition_fn=_transient)
def infer_task(item: Item, output: str, settings: BatchSettings, execution: Execution) -> dict[str, Any]:
    run = infer_item(item, output, settings, execution)
    return {"run": run, "summary": summarize(item, output, settings), "attempts": task_run.run_count}


@task(name="deliver-item", task_run_name="deliver-{item.name}", retry_condition_fn=_transient)
def deliver_task(item: Item, output: str, settings: BatchSettings) -> dict[str, Any]:
    return {"delivered": deliver_item(item, output, settings), "attempts": task_run.run_count}


def _record_run(row: ItemReport, result: Any, retries: int) -> None:
    """Fill ``row`` from what the item's infer task returned, or the exception it failed with."""
    if isinstance(result, BaseException):
        row.status, row.error, row.exit_code = "failed", one_line(result), getattr(result, "exit_code", 70)
        row.attempts = 1 + retries if is_transient(result) else 1
        return
    run, summary = result["run"], result["summary"]
    row.status, row.attempts, row.windows_evaluated = run.status, result["attempts"], run.windows_evaluated
    row.chunks_computed, row.chunks_reused = run.chunks_computed, run.chunks_reused
    row.wall_seconds, row.megapixels = run.wall_seconds, run.megapixels
    row.unit, row.classes = summary["unit"], summary["classes"]


@flow(name="segflow-nightly-batch", log_prints=False)
def nightly_batch_flow(inbox: str, output: str, model: str | None = None, postgis: str | None = None,
                       pacs: str | None = None, workers: int | None = None, dask_address: str | None = None,
                       device: str = "auto", batch: int = 16, chunk: int | None = None, tile: int | None = None,
                       vector_format: str = "gpkg",
                       min_area: float = 0.0, patterns: list[str] | None = None, min_age: float = 0.0,
                       retries: int = 3, retry_delay: float = 30.0) -> dict[str, Any]:
    """Process every item of ``inbox`` not processed before with these settings into ``output/<item>/``.

    ``postgis`` / ``pacs``: delivery targets, without passwords (those come from Prefect Secret blocks,
    ``secret=``, or the environment: ``PGPASSWORD``, ``SEGFLOW_PACS_PASSWORD``). ``workers``: a local dask
    cluster of that many processes, started once for the batch; ``dask_address``: a running cluster.
    ``retries``: attempts after the first for transient failures, waiting ``retry_delay`` seconds, doubling
    each time.
    """
    logger = get_run_logger()
    one_line_errors()
    check_folders(inbox, output)
    settings = batch_settings(model=model, postgis=postgis, pacs=pacs, device=device, batch=batch, chunk=chunk,
                              tile=tile, vector_format=vector_format, min_area=min_area)
    t0, started = time.perf_counter(), datetime.now(UTC).isoformat(timespec="seconds")
    delays = backoff(retries, retry_delay)
    infer = infer_task.with_options(retries=retries, retry_delay_seconds=delays)
    deliver = deliver_task.with_options(retries=retries, retry_delay_seconds=delays)
    with OutputLock(output):  # one batch at a time per output folder
        items, later = discover_task(inbox, patterns, min_age, output)
        report = BatchReport(inbox=inbox, output=output, settings=settings.shown(), started_utc=started,
                             waiting=[i.source for i in later])
        deliveries: list[tuple[ItemReport, PrefectFuture[Any]]] = []
        with batch_execution(workers, device, dask_address) as execution:
            for item in items:
                row = ItemReport(name=item.name, source=item.source, kind=item.kind, outputs=f"{output}/{item.name}")
                report.items.append(row)
                state = infer(item, output, settings, execution, return_state=True)
                _record_run(row, state.result(raise_on_failure=False), retries)
                if row.status != "failed" and settings.targets_for(item):
                    deliveries.append((row, deliver.submit(item, output, settings)))
                logger.info("%s: %s", item.name, scrub(row.error or row.status))
        for row, future in deliveries:
            future.wait()
            row.deliveries = settings.delivery_rows(row.kind, future.state.result(raise_on_failure=False), retries)
        report.notes = settings.notes(items)
        report.finished_utc = datetime.now(UTC).isoformat(timespec="seconds")
        report.wall_seconds = round(time.perf_counter() - t0, 3)
        write_report(output, report)
    create_markdown_artifact(scrub(report.markdown()), key="segflow-batch-report",
                             description=f"segflow batch of {inbox}")
    return report.as_dict()

if __name__ == "__main__":
    nightly_batch_flow(sys.argv[1], sys.argv[2])
