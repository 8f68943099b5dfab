"""``segflow train``: parse options into a :class:`~segflow.training.config.TrainConfig` and call
:func:`segflow.training.loop.train`.

Either ``--config FILE`` (see :mod:`segflow.training.config` for the YAML layout) or one or more
``--image A.tif --labels A_labels.tif`` pairs (a 2D U-Net with default settings; bands and
classes are read from the files), plus overrides ``--epochs``, ``--chip``, ``--batch-size``,
``--chips-per-epoch``, ``--output``, ``--device``, ``--init PACKAGE`` (fine-tune from a model
package), ``--encoder-weights FILE`` (the config's ``model.encoder_weights``) and ``--resume``.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ._errors import SegflowCommand
from .options import device_option, output_option, quiet_option

__all__ = ["train_cmd"]


def _label_classes(labels: Path, names: str | None) -> list[dict[str, Any]]:
    """Classes from ``--classes``, else the label raster's ``classes`` tag, else its largest value."""
    import rasterio
    from rasterio.errors import RasterioError

    from ..errors import InputError

    if names:
        found = [n.strip() for n in names.split(",") if n.strip()]
    else:
        try:
            with rasterio.open(labels) as ds:
                tags = ds.tags()
                found = [n for n in (tags.get("classes") or tags.get("class_names") or "").split(",") if n]
                if not found:
                    top = 0
                    for _, window in ds.block_windows(1):
                        block = ds.read(1, window=window)
                        block = block[block != 255]
                        top = max(top, int(block.max()) if block.size else 0)
                    found = [f"class{k}" for k in range(max(top, 1) + 1)]
        except RasterioError as exc:
            raise InputError(f"label raster {labels} cannot be read ({str(exc).strip()}); expected a GeoTIFF") from None
    return [{"name": n} for n in found]


def _image_bands(image: Path) -> list[dict[str, Any]]:
    import rasterio
    from rasterio.errors import RasterioError

    from ..errors import InputError

    try:
        with rasterio.open(image) as ds:
            names = [(d or f"band{i + 1}").strip().lower() for i, d in enumerate(ds.descriptions)]
    except RasterioError as exc:
        raise InputError(f"image {image} cannot be read ({str(exc).strip()}); expected a GeoTIFF") from None
    if len(set(names)) != len(names):
        names = [f"band{i + 1}" for i in range(len(names))]
    return [{"name": n, "index": i + 1} for i, n in enumerate(names)]


def _raw_config(config: Path | None, images: tuple[Path, ...], labels: tuple[Path, ...],
                classes: str | None) -> dict[str, Any]:
    from ..errors import ConfigError
    from ..training.config import load_train_config

    if len(images) != len(labels):
        raise ConfigError(f"got {len(images)} --image and {len(labels)} --labels: expected one --labels per --image, "
                          "in the same order")
    if config is None and not images:
        raise ConfigError("nothing to train on: give --config FILE or --image IMAGE.tif --labels LABELS.tif")
    if config is not None:
        raw: dict[str, Any] = load_train_config(config).model_dump()
    else:
        raw = {"model": {"name": "trained-unet", "bands": _image_bands(images[0]),
                         "classes": _label_classes(labels[0], classes)}}
    if images:
        raw["data"] = {"pairs": [{"image": i, "labels": lab} for i, lab in zip(images, labels, strict=True)]}
    return raw


def _command_line(config: Path | None, images: tuple[Path, ...], labels: tuple[Path, ...],
                  extra: dict[str, Any]) -> str:
    parts = ["segflow", "train"]
    if config is not None:
        parts += ["--config", str(config)]
    for image, label in zip(images, labels, strict=True):
        parts += ["--image", str(image), "--labels", str(label)]
    for key, value in extra.items():
        if value is True:
            parts.append(f"--{key}")
        elif value is not None and value is not False:
            parts += [f"--{key}", str(value)]
    return shlex.join(parts)


@contextmanager
def _reporter(quiet: bool) -> Iterator[Callable[[Any], None] | None]:
    """A tqdm bar on stderr when it is a terminal; otherwise one line per epoch (none with --quiet)."""
    if quiet:
        yield None
        return
    if not sys.stderr.isatty():

        def line(event: Any) -> None:
            if event.phase == "validate":
                click.echo(f"epoch {event.epoch}/{event.epochs}: loss {event.loss:.4f}, validation "
                           f"{getattr(event, 'metric', 'mean IoU')} {event.val_miou:.4f}, {event.seconds:.1f} s",
                           err=True)

        yield line
        return
    from tqdm import tqdm

    bar: Any = None

    def update(event: Any) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=event.epochs * event.steps, unit="step", desc="train", file=sys.stderr,
                       dynamic_ncols=True)
        bar.n = (event.epoch - 1) * event.steps + event.step
        iou = "-" if event.val_miou is None else f"{event.val_miou:.3f}"
        bar.set_postfix_str(f"epoch {event.epoch}/{event.epochs} loss {event.loss:.4f} val IoU {iou}")

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


@click.command("train", cls=SegflowCommand)
@click.option("--config", "-c", "config", type=click.Path(path_type=Path), default=None,
              help="Training config YAML (model, data, validation, loss, optimizer, epochs...).")
@click.option("--image", "images", multiple=True, type=click.Path(path_type=Path),
              help="Training image GeoTIFF; repeatable, each with a --labels.")
@click.option("--labels", "labels", multiple=True, type=click.Path(path_type=Path),
              help="uint8 label raster on the grid of the matching --image (255 = unlabelled).")
@click.option("--classes", default=None, help="Comma-separated class names for --image/--labels "
              "(default: the label raster's 'classes' tag, else class0..classN).")
@click.option("--epochs", type=int, default=None, help="Override the number of epochs.")
@click.option("--chip", type=int, default=None, help="Override the training chip size (pixels a side).")
@click.option("--batch-size", type=int, default=None, help="Override the number of chips per step.")
@click.option("--chips-per-epoch", type=int, default=None, help="Override the number of chips per epoch.")
@output_option(help="Override the output directory (checkpoint, history, package/).")
@device_option(default=None, help="Override the device: auto, cpu, cuda or cuda:N.")
@click.option("--init", "init", default=None, metavar="PACKAGE",
              help="Fine-tune: start from this model package's weights (built-in name or path; same architecture "
                   "and bands; the head is re-initialised when only the classes differ).")
@click.option("--encoder-weights", type=click.Path(path_type=Path), default=None,
              help="torchvision ImageNet weights (a state-dict file) for the architecture's encoder "
              "(model.architecture.args.encoder: resnet18, resnet34, resnet50 or vgg11).")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in the output directory.")
@quiet_option(help="No progress output and no summary line.")
def train_cmd(config: Path | None, images: tuple[Path, ...], labels: tuple[Path, ...], classes: str | None,
              epochs: int | None, chip: int | None, batch_size: int | None, chips_per_epoch: int | None,
              output_dir: Path | None, device: str | None, init: str | None, encoder_weights: Path | None,
              resume: bool, quiet: bool) -> None:
    """Train a segmentation model on labelled chips and write a model package."""
    from ..training.config import train_config_from_dict
    from ..training.loop import train

    raw = _raw_config(config, images, labels, classes)
    overrides = {"epochs": epochs, "batch_size": batch_size, "chips_per_epoch": chips_per_epoch, "output": output_dir,
                 "device": device, "init": init}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    if chip is not None:
        raw["model"] = {**raw["model"], "chip": chip}
    if encoder_weights is not None:
        raw["model"] = {**raw["model"], "encoder_weights": encoder_weights}
    raw["resume"] = resume
    settings = train_config_from_dict(raw, source=str(config) if config else "command-line options")
    flags = {"classes": classes, "chip": chip, **overrides, "encoder_weights": encoder_weights, "resume": resume}
    command = _command_line(config, images, labels, {k.replace("_", "-"): v for k, v in flags.items()})
    with _reporter(quiet) as progress:
        result = train(settings, progress=progress, command=command)
    if not quiet:
        click.echo(result.summary())
