"""``segflow sample-scene``: a synthetic multispectral GeoTIFF with its ground truth."""

from __future__ import annotations

from pathlib import Path

import click

from ._errors import SegflowCommand

__all__ = ["sample_scene_cmd"]


@click.command("sample-scene", cls=SegflowCommand)
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--width", type=int, default=2048, show_default=True, help="Width in pixels.")
@click.option("--height", type=int, default=2048, show_default=True, help="Height in pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed; same seed, same scene.")
@click.option("--truth", type=click.Path(path_type=Path), default=None,
              help="Also write the ground-truth label raster here.")
@click.option("--bands", default="blue,green,red,nir", show_default=True,
              help="Comma-separated bands, any of blue, green, red, nir.")
@click.option("--nodata", type=int, default=None, help="Add a nodata corner with this value.")
def sample_scene_cmd(output: Path, width: int, height: int, seed: int, truth: Path | None, bands: str,
                     nodata: int | None) -> None:
    """Write a synthetic multispectral GeoTIFF (water, vegetation, bare ground, buildings)."""
    from ..synthetic import write_synthetic_scene

    info = write_synthetic_scene(output, width=width, height=height, seed=seed, truth_path=truth,
                                 bands=[b.strip() for b in bands.split(",")], nodata=nodata)
    click.echo(f"wrote {info.path} ({info.width}x{info.height}, bands {', '.join(info.bands)})"
               + (f" and truth {info.truth_path}" if info.truth_path else ""))
