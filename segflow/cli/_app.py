"""The ``segflow`` group, where every command is added, and :func:`main`, the entry point.

Commands live one per module (``tile_infer``, ``sample_scene``, ``demo``, ``models``,
``evaluate``, ``train``) and are added here explicitly; importing a module registers nothing.
Each command imports the library only when it runs, so ``segflow --help`` starts fast.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from typing import Any

import click

from .. import __version__
from ..errors import SegflowError, SegflowWarning
from ._errors import SegflowGroup, usage_error_line
from .batch import batch_cmd
from .demo import demo_cmd
from .evaluate import eval_cmd
from .models import export_cmd, models_list_cmd, models_show_cmd
from .sample_scene import sample_scene_cmd
from .serve import serve_cmd
from .tile_infer import tile_infer_cmd
from .train import train_cmd
from .vectorize import vectorize_cmd

__all__ = ["cli", "main"]


def _group(name: str, help: str, commands: list[click.Command], **attrs: Any) -> SegflowGroup:
    return SegflowGroup(name, commands=commands, help=help, **attrs)


cli = _group(
    "segflow",
    """segflow: batch segmentation of images too large to hold in memory.

    Tiles a scene into overlapping windows, runs a segmentation model over them, blends the
    windows into a chunked zarr mask and publishes a Cloud-Optimized GeoTIFF.
    """,
    [
        _group("run", "Run a pipeline.", [tile_infer_cmd]),
        batch_cmd,
        serve_cmd,
        sample_scene_cmd,
        demo_cmd,
        _group("models", "Inspect model packages.", [models_list_cmd, models_show_cmd, export_cmd]),
        vectorize_cmd,
        eval_cmd,
        train_cmd,
    ],
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
cli = click.version_option(__version__, prog_name="segflow")(cli)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning every error into one line on stderr and an exit code.

    Exit codes: 0 success, 2 input/configuration/usage error, 3 model error, 4 output error,
    5 device error, 70 internal error (a bug), 130 interrupted.
    """
    with warnings.catch_warnings():
        # A raster without georeferencing is valid input (its outputs keep pixel coordinates);
        # rasterio's warning about it would only add noise lines to the CLI's output.
        warnings.filterwarnings("ignore", message="Dataset has no geotransform")
        warnings.showwarning = _show_warning
        return _main(argv)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Every warning as one line on stderr: ``segflow: warning: ...`` (the category named unless segflow's own)."""
    text = " ".join(str(message).split())
    kind = "" if issubclass(category, SegflowWarning) else f"{category.__name__}: "
    click.echo(f"segflow: warning: {kind}{text}", err=True)


def _main(argv: list[str] | None) -> int:
    try:
        # click's own main() would print a blank line before an interrupt; invoke the group directly
        args = sys.argv[1:] if argv is None else list(argv)
        with cli.make_context("segflow", args) as ctx:
            code = cli.invoke(ctx)
    except click.exceptions.Exit as exc:  # --help, --version
        return int(exc.exit_code)
    except SegflowError as exc:
        click.echo(f"segflow: error: {exc}", err=True)
        return exc.exit_code
    except click.UsageError as exc:
        click.echo(usage_error_line(exc), err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("segflow: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        click.echo(f"segflow: error: {' '.join(exc.format_message().split())}", err=True)
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
    return code if isinstance(code, int) else 0
