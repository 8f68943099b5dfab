"""``segflow demo``: sample scene, tile-infer over it, per-class IoU against its truth."""

from __future__ import annotations

from pathlib import Path

import click

from ._errors import SegflowCommand
from .options import model_option, output_option, progress_bar

__all__ = ["demo_cmd"]


@click.command("demo", cls=SegflowCommand)
@output_option(default=Path("demo"), help="Folder for the sample scene, its truth and the outputs.")
@click.option("--size", type=int, default=2048, show_default=True, help="Scene width and height in pixels.")
@model_option(help="Model to run (default: demo-unet-2d, the trained demo UNet).")
def demo_cmd(output_dir: Path, size: int, model: str | None) -> None:
    """Make a sample scene, run tile-infer on it and print per-class IoU against its truth."""
    from ..demo import run_demo

    with progress_bar(True, "chunk") as progress:
        report = run_demo(output_dir, size=size, model=model, progress=progress)
    click.echo(report)
