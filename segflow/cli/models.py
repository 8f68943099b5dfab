"""``segflow models list|show|export``: inspect and convert model packages."""

from __future__ import annotations

from pathlib import Path

import click

from ._errors import SegflowCommand
from .options import output_option

__all__ = ["export_cmd", "models_list_cmd", "models_show_cmd"]


@click.command("list", cls=SegflowCommand)
def models_list_cmd() -> None:
    """List the built-in models."""
    from ..models import builtin_names, resolve_package

    for name in builtin_names():
        spec = resolve_package(name).spec
        click.echo(f"{name:22s} {spec.spatial_dims}D  classes: {', '.join(spec.class_names)}")


@click.command("show", cls=SegflowCommand)
@click.argument("name_or_path")
def models_show_cmd(name_or_path: str) -> None:
    """Print a model package's contract (bands, normalisation, tile, classes)."""
    from ..models import resolve_package

    package = resolve_package(name_or_path)
    spec = package.spec
    click.echo(f"{spec.name} {spec.version} ({package.source})")
    if spec.description:
        click.echo(f"  {spec.description}")
    bands = ", ".join(f"{b.name}" + (f"=band {b.index}" if b.index else "") for b in spec.input.bands)
    click.echo(f"  spatial dims: {spec.spatial_dims}   tile: {spec.tile_shape}   overlap: {spec.overlap}")
    click.echo(f"  input bands: {bands}   normalization: {spec.input.normalization.mode}")
    if (e := spec.input.expects) is not None:
        low = f", 1st percentile <= {e.p1_at_most:g}" if e.p1_at_most is not None else ""
        click.echo(f"  expects: {'/'.join(e.modality or ['any modality'])}, {e.unit} in [{e.range[0]:g}, "
                   f"{e.range[1]:g}]{low}")
    if spec.spatial_dims == 3:
        spacing = "not declared" if spec.spacing is None else f"{list(spec.spacing)} mm"
        click.echo(f"  spacing (dz, dy, dx): {spacing}   orientation: {spec.orientation or 'not declared'}")
    kind = "" if spec.thresholds is None else f", multi-label, thresholds {list(spec.thresholds)}"
    if spec.instances:
        kind = f" (objects scoring >= {spec.output.min_score:g} are kept)"
    click.echo(f"  output: {spec.output.activation}{kind}   weights: {spec.weights or 'none'}"
               + (f" (sha256 {package.weights_sha256[:12]})" if package.weights_sha256 else ""))
    click.echo(f"  precisions: {', '.join(spec.precisions) if spec.precisions else 'fp32 (none declared)'}")
    for i, c in enumerate(spec.classes):
        click.echo(f"  class {i}: {c.name} ({c.kind})")


@click.command("export", cls=SegflowCommand)
@click.argument("path_or_name")
@click.option("--format", "-f", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True,
              help="onnx: opset 17, dynamic batch and spatial axes; torchscript: traced at the model's tile size.")
@output_option(required=True, help="New package folder to write (must not exist yet).")
def export_cmd(path_or_name: str, fmt: str, output_dir: Path) -> None:
    """Export PATH_OR_NAME (package folder, archive or built-in name) as a new package.

    The export is checked against the source at another spatial size before anything is written.
    """
    from ..models.export import export_package

    written = export_package(path_or_name, output_dir, fmt)
    click.echo(f"wrote {written} ({fmt})")
