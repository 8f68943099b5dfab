"""``segflow models export``: a model package's network as a new ONNX or TorchScript package."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["export_cmd"]


@click.command("export")
@click.argument("path_or_name")
@click.option("--format", "-f", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True,
              help="onnx: opset 17, dynamic batch and spatial axes; torchscript: traced at the model's tile size.")
@click.option("--output", "-o", "output_dir", required=True, type=click.Path(path_type=Path),
              help="New package folder to write (must not exist yet).")
def export_cmd(path_or_name: str, fmt: str, output_dir: Path) -> None:
    """Export PATH_OR_NAME (package folder, archive or built-in name) as a new package.

    The export is checked against the source at another spatial size before anything is written.
    """
    from ..models.export import export_package

    written = export_package(path_or_name, output_dir, fmt)
    click.echo(f"wrote {written} ({fmt})")
