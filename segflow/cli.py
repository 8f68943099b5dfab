"""The ``segflow`` command line: each command parses its options and makes one library call."""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from . import __version__
from .errors import SegflowError

__all__ = ["main"]


@contextmanager
def _progress_bar(enabled: bool, unit: str) -> Iterator[Callable[[int, int], None] | None]:
    """A tqdm bar on stderr when it is a terminal; None (no output) otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit=unit, desc="segflow", file=sys.stderr, dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="segflow")
def cli() -> None:
    """segflow: batch segmentation of images too large to hold in memory.

    Tiles a scene into overlapping windows, runs a segmentation model over them, blends the
    windows into a chunked zarr mask and publishes a Cloud-Optimized GeoTIFF.
    """


@cli.group("run")
def run_group() -> None:
    """Run a pipeline."""


@run_group.command("tile-infer")
@click.option("--input", "-i", "inputs", required=True, multiple=True, metavar="[NAME=]PATH",
              help="Input raster (GeoTIFF or any GDAL raster). Models that read several co-registered "
                   "rasters take the others by name, e.g. --input scene.tif --input dem=dem.tif.")
@click.option("--output", "-o", "output_dir", default="out", show_default=True, type=click.Path(path_type=Path),
              help="Output directory; gets mask.zarr, labels.tif and run.json.")
@click.option("--model", "-m", default=None,
              help="Built-in model name or path to a model package directory "
                   "(default: spectral-landcover). See `segflow models list`.")
@click.option("--tile", type=int, default=None, help="Window size in pixels (default: the model's).")
@click.option("--overlap", type=float, default=None,
              help="Fraction of a window shared with its neighbour, 0 <= overlap < 1 (default: the model's).")
@click.option("--blend", type=click.Choice(["gaussian", "cosine", "constant"]), default="gaussian",
              show_default=True, help="Weights for blending overlapping windows.")
@click.option("--chunk", type=int, default=2048, show_default=True,
              help="Processing chunk size in pixels; bounds memory, never changes the result.")
@click.option("--batch", type=int, default=16, show_default=True, help="Windows per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--band", "bands", multiple=True, metavar="NAME=N",
              help="Scene band (1-based) for a model input, e.g. --band nir=8; repeatable.")
@click.option("--save-scores", is_flag=True, help="Also store blended class scores (float16) in mask.zarr.")
@click.option("--no-amp", is_flag=True, help="Disable mixed precision on CUDA.")
@click.option("--workers", type=int, default=None,
              help="Run the chunk tasks on a local cluster of this many worker processes (default: threads in "
                   "this process).")
@click.option("--dask-address", default=None, metavar="ADDRESS",
              help="Run the chunk tasks on a running dask.distributed cluster, e.g. tcp://scheduler:8786.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary line.")
def tile_infer_cmd(inputs: tuple[str, ...], output_dir: Path, model: str | None, tile: int | None,
                   overlap: float | None, blend: str, chunk: int, batch: int, device: str, bands: tuple[str, ...],
                   save_scores: bool, no_amp: bool, workers: int | None, dask_address: str | None,
                   quiet: bool) -> None:
    """Segment a raster of any size by overlapping windows into mask.zarr + labels.tif (COG).

    Run again after a crash with the same options: only the unfinished chunks are computed.
    """
    from .bands import parse_band_overrides, parse_inputs
    from .tile_infer import DEFAULT_MODEL, Execution, TileInferParams, tile_infer

    params = TileInferParams(model=model or DEFAULT_MODEL, tile=tile, overlap=overlap, blend=blend, chunk=chunk,
                             batch=batch, device=device, save_scores=save_scores,
                             bands=parse_band_overrides(bands), amp=not no_amp)
    execution = Execution(workers=workers, address=dask_address)
    with _progress_bar(not quiet, "chunk") as progress:
        result = tile_infer(parse_inputs(inputs), output_dir, params, progress=progress, execution=execution)
    if not quiet:
        click.echo(result.summary())


@cli.command("sample-scene")
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
    from .synthetic import write_synthetic_scene

    info = write_synthetic_scene(output, width=width, height=height, seed=seed, truth_path=truth,
                                 bands=[b.strip() for b in bands.split(",")], nodata=nodata)
    click.echo(f"wrote {info.path} ({info.width}x{info.height}, bands {', '.join(info.bands)})"
               + (f" and truth {info.truth_path}" if info.truth_path else ""))


@cli.command("demo")
@click.option("--output", "-o", "output_dir", default="demo", show_default=True, type=click.Path(path_type=Path),
              help="Folder for the sample scene, its truth and the outputs.")
@click.option("--size", type=int, default=2048, show_default=True, help="Scene width and height in pixels.")
@click.option("--model", "-m", default=None, help="Model to run (default: demo-unet-2d, the trained demo UNet).")
def demo_cmd(output_dir: Path, size: int, model: str | None) -> None:
    """Make a sample scene, run tile-infer on it and print per-class IoU against its truth."""
    from .demo import run_demo

    with _progress_bar(True, "chunk") as progress:
        report = run_demo(output_dir, size=size, model=model, progress=progress)
    click.echo(report)


@cli.group("models")
def models_group() -> None:
    """Inspect model packages."""


@models_group.command("list")
def models_list_cmd() -> None:
    """List the built-in models."""
    from .models import builtin_names, resolve_package

    for name in builtin_names():
        spec = resolve_package(name).spec
        click.echo(f"{name:22s} {spec.spatial_dims}D  classes: {', '.join(spec.class_names)}")


@models_group.command("show")
@click.argument("name_or_path")
def models_show_cmd(name_or_path: str) -> None:
    """Print a model package's contract (bands, normalisation, tile, classes)."""
    from .models import resolve_package

    package = resolve_package(name_or_path)
    spec = package.spec
    click.echo(f"{spec.name} {spec.version} ({package.source})")
    if spec.description:
        click.echo(f"  {spec.description}")
    bands = ", ".join(f"{b.name}" + (f"=band {b.index}" if b.index else "") for b in spec.input.bands)
    click.echo(f"  spatial dims: {spec.spatial_dims}   tile: {spec.tile_shape}   overlap: {spec.overlap}")
    click.echo(f"  input bands: {bands}   normalization: {spec.input.normalization.mode}")
    click.echo(f"  output: {spec.output.activation}   weights: {spec.weights or 'none'}"
               + (f" (sha256 {package.weights_sha256[:12]})" if package.weights_sha256 else ""))
    for i, c in enumerate(spec.classes):
        click.echo(f"  class {i}: {c.name} ({c.kind})")


def _register() -> None:
    from .commands import eval_cmd, export_cmd, train_cmd

    models_group.add_command(export_cmd)
    cli.add_command(eval_cmd)
    cli.add_command(train_cmd)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning every error into one line on stderr and an exit code."""
    # A raster without georeferencing is valid input (its outputs keep pixel coordinates);
    # rasterio's warning about it would only add noise lines to the CLI's output.
    warnings.filterwarnings("ignore", message="Dataset has no geotransform")
    try:
        cli.main(args=argv, prog_name="segflow", standalone_mode=False)
    except SegflowError as exc:
        click.echo(f"segflow: error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("segflow: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("segflow: interrupted", err=True)
        return 130
    except Exception as exc:
        if os.environ.get("SEGFLOW_DEBUG"):
            traceback.print_exc()
        click.echo(f"segflow: internal error: {type(exc).__name__}: {exc} (set SEGFLOW_DEBUG=1 for details)",
                   err=True)
        return 70
    return 0


if __name__ == "__main__":
    sys.exit(main())
