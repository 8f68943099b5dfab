"""``segflow eval``: per-class scores of a prediction against truth.

Rasters: IoU, Dice, precision, recall, coverage (failing below ``--min-coverage`` after the report is
written) and object scores of thing classes; against a truth vector file: object precision, recall and
F1; volumes: Dice, HD95 and surface Dice in mm.
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
              help="Truth labels on the prediction's grid: GeoTIFF for rasters, NIfTI for volumes; or a vector "
                   "file of truth polygons (gpkg, fgb, geojson, shp, parquet; any CRS) for object scores.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the report as JSON here.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None,
              help="Also write the per-class rows as CSV here.")
@click.option("--ignore", "ignore", type=int, multiple=True, metavar="N",
              help="Truth value to skip besides nodata (255); repeatable.")
@click.option("--block", type=int, default=None,
              help="Read window side in pixels (default 2048; 1024 against a vector truth) or voxels for volumes "
                   "(default 128); bounds memory, never changes the result.")
@click.option("--tolerance", type=float, default=None, metavar="MM",
              help="Volumes: surface Dice tolerance in mm (default 2: a one-voxel boundary shift at clinical "
                   "in-plane spacings).")
@click.option("--halo", type=float, default=None, metavar="MM",
              help="Volumes: surface distances up to this are exact (default 50 mm); HD95 beyond it is shown "
                   "as a lower bound '> d'.")
@click.option("--iou", type=float, default=None,
              help="Objects (vector truth, or thing classes against a raster truth): a predicted and a true object "
                   "match when their IoU is at least this (default 0.5; below 0.5 objects are paired greedily by "
                   "best IoU).")
@click.option("--things", "things", multiple=True, metavar="NAME[,NAME]",
              help="Raster truth: classes (names or labels) scored as objects at IoU >= --iou; default the thing "
                   "classes of the run's model; 'none' for no object scores. Repeatable.")
@click.option("--min-coverage", "min_coverage", type=float, default=None, metavar="PERCENT",
              help="Raster truth: fail (exit 2, after writing the report) when the prediction covers less than this "
                   "percentage of the scored truth pixels (default 100; uncovered truth counts as missed).")
@click.option("--truth-class", "truth_class", default=None, metavar="NAME",
              help="Vector truth: the class of every feature (for a truth without a class_name, class or class_id "
                   "column).")
def eval_cmd(pred: Path, truth: Path, json_path: Path | None, csv_path: Path | None, ignore: tuple[int, ...],
             block: int | None, tolerance: float | None, halo: float | None, iou: float | None,
             truth_class: str | None, things: tuple[str, ...], min_coverage: float | None) -> None:
    """Score a prediction against truth: per-class IoU, Dice, precision, recall, mean IoU, coverage and
    object F1 of thing classes for rasters; object precision, recall and F1 at IoU >= 0.5 against truth
    polygons; per-class Dice, HD95 and surface Dice in mm for volumes."""
    from ..evaluate import EvalReport, evaluate_prediction

    names = [n.strip() for t in things for n in t.split(",") if n.strip()]
    report = evaluate_prediction(pred, truth, block=block, ignore=ignore, tolerance=tolerance, halo=halo, iou=iou,
                                 truth_class=truth_class, things=None if not things else
                                 [] if names == ["none"] else names, min_coverage=min_coverage)
    click.echo(report.format_table())
    written = []
    if json_path is not None:
        written.append(report.to_json(json_path))
    if csv_path is not None:
        written.append(report.to_csv(csv_path))
    for path in written:
        click.echo(f"wrote {path}")
    if isinstance(report, EvalReport):
        report.require_coverage(100.0 if min_coverage is None else min_coverage, written=written)
