"""``segflow eval``: per-class IoU of a prediction against a truth label raster."""

from __future__ import annotations

from pathlib import Path

import click

from ._errors import SegflowCommand

__all__ = ["eval_cmd"]


@click.command("eval", cls=SegflowCommand)
@click.option("--pred", "-p", "pred", required=True, type=click.Path(path_type=Path),
              help="Prediction: tile-infer output folder, label GeoTIFF or mask.zarr.")
@click.option("--truth", "-t", "truth", required=True, type=click.Path(path_type=Path),
              help="Truth label raster (GeoTIFF) on the prediction's grid.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the report as JSON here.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None,
              help="Also write the per-class rows as CSV here.")
@click.option("--ignore", "ignore", type=int, multiple=True, metavar="N",
              help="Truth value to skip besides nodata (255); repeatable.")
@click.option("--block", type=int, default=2048, show_default=True,
              help="Read window side in pixels; bounds memory, never changes the result.")
def eval_cmd(pred: Path, truth: Path, json_path: Path | None, csv_path: Path | None, ignore: tuple[int, ...],
             block: int) -> None:
    """Score a prediction against truth: per-class IoU, Dice, precision, recall; mean IoU."""
    from ..evaluate import evaluate

    report = evaluate(pred, truth, block=block, ignore=ignore)
    click.echo(report.format_table())
    if json_path is not None:
        click.echo(f"wrote {report.to_json(json_path)}")
    if csv_path is not None:
        click.echo(f"wrote {report.to_csv(csv_path)}")
