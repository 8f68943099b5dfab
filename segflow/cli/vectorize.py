"""``segflow vectorize``: the objects of an existing raster run as polygons, without running the model again."""

from __future__ import annotations

from pathlib import Path

import click

from ._errors import SegflowCommand

__all__ = ["vectorize_cmd"]


@click.command("vectorize", cls=SegflowCommand)
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Vector file to write: .gpkg, .parquet (GeoParquet), .fgb or .geojson (RFC 7946, WGS 84).")
@click.option("--format", "fmt", type=click.Choice(["gpkg", "parquet", "fgb", "geojson"]), default=None,
              help="Format, when the output's suffix does not say it.")
@click.option("--min-area", type=float, default=0.0, show_default=True,
              help="Leave out objects smaller than this, in map units² (m² for a metric CRS).")
@click.option("--simplify", type=float, default=0.0, show_default=True,
              help="Topology-preserving simplification tolerance in map units (0: exact pixel outlines).")
@click.option("--model", default=None,
              help="The model the run used, when its name in the run is not available here (for the classes).")
def vectorize_cmd(run: Path, output: Path, fmt: str | None, min_area: float, simplify: float,
                  model: str | None) -> None:
    """Write every object of a tile-infer run (its folder or mask.zarr) as one polygon each.

    Things (one polygon per instance) and stuff classes (merged regions) in the scene's CRS; class 0
    is left out. The run is only read.
    """
    from ..features import VectorOptions
    from ..io.vector_sink import vectorize_run

    written = vectorize_run(run, output, fmt=fmt, options=VectorOptions(min_area=min_area, simplify=simplify),
                            model=model)
    click.echo(f"wrote {output} ({written} objects)")
