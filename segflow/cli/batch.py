"""``segflow batch``: the nightly batch flow over an inbox, from the command line."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ._errors import SegflowCommand
from .options import device_option, model_option, output_option, quiet_option

__all__ = ["BATCH_FAILED", "batch_cmd"]

BATCH_FAILED = 7  # the batch ran; some items or deliveries failed (report.md lists them)


@click.command("batch", cls=SegflowCommand)
@click.option("--inbox", required=True, metavar="FOLDER_OR_LIST",
              help="A folder of scenes (GeoTIFF), volumes (NIfTI) and DICOM series folders, searched recursively, "
                   "or a text file with one path per line.")
@output_option(required=True, help="Output folder: one folder per item, report.md and report.json.")
@model_option(help="Model for every item (default: the built-in one for each item's dimensions).")
@click.option("--postgis", default=None, metavar="URL",
              help="Deliver the rasters' polygons to this PostGIS table (postgresql://user@host/db?table=objects; "
                   "the password from PGPASSWORD or &secret=PREFECT_BLOCK).")
@click.option("--pacs", default=None, metavar="TARGET",
              help="Deliver the DICOM series' SEG to this PACS (dicomweb+http://[user@]host:8042/dicom-web, the "
                   "password from SEGFLOW_PACS_PASSWORD or ?secret=PREFECT_BLOCK; or dimse://AET@host:4242).")
@click.option("--workers", type=int, default=None, help="Run the items' chunks on a local cluster of this many worker "
                                                         "processes, started once for the batch.")
@click.option("--dask-address", default=None, metavar="ADDRESS",
              help="Run the items' chunks on a running dask.distributed cluster, e.g. tcp://scheduler:8786.")
@device_option(default="auto", help="auto, cpu, cuda or cuda:N.")
@click.option("--batch", "batch_size", type=int, default=16, show_default=True, help="Windows per forward pass.")
@click.option("--chunk", type=int, default=None, help="Processing chunk size (default: the engine's).")
@click.option("--tile", type=int, default=None, help="Window size (default: the model's).")
@click.option("--vector-format", type=click.Choice(["gpkg", "parquet", "fgb", "geojson"]), default="gpkg",
              show_default=True, help="Format of the rasters' polygons.")
@click.option("--min-area", type=float, default=0.0, show_default=True,
              help="Leave out polygons smaller than this, in map units².")
@click.option("--pattern", "patterns", multiple=True, metavar="GLOB",
              help="File names to take from an inbox folder (default: *.tif *.tiff *.nii *.nii.gz); repeatable.")
@click.option("--min-age", type=float, default=0.0, show_default=True,
              help="Leave files modified less than this many seconds ago for the next batch (still arriving).")
@click.option("--retries", type=int, default=3, show_default=True,
              help="Attempts after the first for transient failures (a target down, an I/O error, a lost worker).")
@click.option("--retry-delay", type=float, default=30.0, show_default=True,
              help="Seconds before the first retry; doubled for each next one.")
@quiet_option(help="No summary line.")
def batch_cmd(inbox: str, output_dir: Path, model: str | None, postgis: str | None, pacs: str | None,
              workers: int | None, dask_address: str | None, device: str, batch_size: int, chunk: int | None,
              tile: int | None, vector_format: str, min_area: float, patterns: tuple[str, ...], min_age: float,
              retries: int, retry_delay: float, quiet: bool) -> int:
    """Process every scene and volume of an inbox not processed before with these settings, deliver the results
    and write report.md. Run it every night: items already done are skipped, unfinished ones resume, failed
    deliveries are retried; exit 7 when some item or delivery failed (the report lists them).

    This runs the Prefect flow ``segflow-nightly-batch`` (pipelines/batch_flow.py), which ``segflow serve``
    and ``prefect deploy`` schedule.
    """
    from ..batch.settings import batch_settings, check_folders, move_password
    from ..errors import ConfigError

    if retries < 0 or retry_delay < 0:
        raise ConfigError(f"--retries and --retry-delay must be >= 0, got {retries} and {retry_delay}")
    # a password given here stays in this process's environment, out of the flow's stored parameters
    postgis = move_password(postgis, os.environ)
    pacs = move_password(pacs, os.environ, "SEGFLOW_PACS_PASSWORD")
    # what would fail every item is refused here, in one line, before Prefect's server starts
    check_folders(inbox, str(output_dir))
    batch_settings(model=model, postgis=postgis, pacs=pacs, device=device, batch=batch_size, chunk=chunk, tile=tile,
                   vector_format=vector_format, min_area=min_area)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # workers' start-up chatter
    if quiet:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    try:
        from pipelines.batch_flow import nightly_batch_flow
    except ImportError as exc:
        raise ConfigError(f"segflow batch runs a Prefect flow and needs Prefect ({exc}); install segflow[flows]") \
            from None
    report = nightly_batch_flow(inbox=inbox, output=str(output_dir), model=model, postgis=postgis, pacs=pacs,
                                workers=workers, dask_address=dask_address, device=device, batch=batch_size,
                                chunk=chunk, tile=tile,
                                vector_format=vector_format, min_area=min_area, patterns=list(patterns) or None,
                                min_age=min_age, retries=retries, retry_delay=retry_delay)
    failed = [i["name"] for i in report["items"] if i["status"] == "failed"
              or any(d.get("status") == "failed" for d in i["deliveries"].values())]
    if not quiet:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(report["counts"].items())) or "no items"
        later = f", {len(report['waiting'])} left for the next batch" if report["waiting"] else ""
        click.echo(f"{len(report['items'])} item(s): {counts}{later}; report: {output_dir / 'report.md'}")
    if failed:
        click.echo(f"segflow: error: {len(failed)} item(s) failed or were not delivered ({', '.join(failed[:5])}"
                   f"{', ...' if len(failed) > 5 else ''}); see {output_dir / 'report.md'}", err=True)
        return BATCH_FAILED
    return 0
