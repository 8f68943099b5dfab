"""``segflow eval``: per-class scores of a prediction against truth.

Rasters: IoU, Dice, precision, recall; volumes: Dice, HD95 and surface Dice in mm.
"""

from __future__ import annotations

from pathlib import Path

import click

from ._errors import SegflowCommand

__all__ = ["eval_cmd"]


@click.command("eval", cls=SegflowCommand)
@click.option("--pred", "-p", "pred", required=True, type=click.Path(path_type=Path),
              help="Prediction: tile-infer output folder, label GeoTIFF, mask.zarr or label NIfTI.")
@click.option("--truth", "-t", "truth", required=True, type=click.Path(path_type=Path),
              help="Truth labels on the prediction's grid: GeoTIFF for rasters, NIfTI for volumes.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the report as JSON here.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None,
              help="Also write the per-class rows as CSV here.")
@click.option("--ignore", "ignore", type=int, multiple=True, metavar="N",
              help="Truth value to skip besides nodata (255); repeatable.")
@click.option("--block", type=int, default=None,
              help="Read window side in pixels (default 2048) or voxels for volumes (default 128); bounds "
                   "memory, never changes the result.")
@click.option("--tolerance", type=float, default=None, metavar="MM",
              help="Volumes: surface Dice tolerance in mm (default 2: a one-voxel boundary shift at clinical "
                   "in-plane spacings).")
@click.option("--halo", type=float, default=None, metavar="MM",
              help="Volumes: surface distances up to this are exact (default 50 mm); HD95 beyond it is shown "
                   "as a lower bound '> d'.")
def eval_cmd(pred: Path, truth: Path, json_path: Path | None, csv_path: Path | None, ignore: tuple[int, ...],
             block: int | None, tolerance: float | None, halo: float | None) -> None:
    """Score a prediction against truth: per-class IoU, Dice, precision, recall and mean IoU for rasters;
    per-class Dice, HD95 and surface Dice in mm for volumes."""
    from ..evaluate import evaluate_prediction

    report = evaluate_prediction(pred, truth, block=block, ignore=ignore, tolerance=tolerance, halo=halo)
    click.echo(report.format_table())
    if json_path is not None:
        click.echo(f"wrote {report.to_json(json_path)}")
    if csv_path is not None:
        click.echo(f"wrote {report.to_csv(csv_path)}")
