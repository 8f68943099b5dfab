"""``segflow serve``: the deployments of prefect.yaml, registered, scheduled and run by this process."""

from __future__ import annotations

from pathlib import Path

import click

from ._errors import SegflowCommand

__all__ = ["serve_cmd"]


@click.command("serve", cls=SegflowCommand)
@click.option("--file", "-f", "file", type=click.Path(path_type=Path), default=Path("prefect.yaml"),
              show_default=True, help="The project's deployment file; entrypoints are relative to its folder.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Run at most this many flow runs at a time (default: no limit).")
def serve_cmd(file: Path, limit: int | None) -> int:
    """Serve the deployments of prefect.yaml until stopped: register them with the Prefect server at
    PREFECT_API_URL, whose scheduler creates their scheduled runs, and run each due run here.

    Needs a running Prefect server (prefect server start); no work pool or worker. Ctrl-C or SIGTERM
    cancels the runs in progress and pauses the deployments' schedules; serving again resumes them.
    """
    from ..deployments import build_deployments, check_api, serve

    deployments = build_deployments(file)
    url = check_api()
    for d in deployments:
        when = ", ".join(_schedule_text(s.schedule) for s in d.schedules or []) or "on demand"
        click.echo(f"serving {d.flow_name}/{d.name} ({when})", err=True)
    click.echo(f"runs are scheduled by the Prefect server at {url}; Ctrl-C to stop", err=True)
    serve(deployments, limit=limit)
    click.echo("stopped; the deployments' schedules are paused until served again", err=True)
    return 0


def _schedule_text(schedule: object) -> str:
    cron, interval = getattr(schedule, "cron", None), getattr(schedule, "interval", None)
    tz = getattr(schedule, "timezone", None) or "UTC"
    return f"cron {cron!r} {tz}" if cron else f"every {interval}"
