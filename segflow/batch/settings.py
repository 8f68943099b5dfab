"""What every item of a batch runs with, checked once before the first item, and how it is shown.

A batch runs from a Prefect deployment whose parameters the Prefect server stores and shows, so
the targets given to a batch must not carry passwords: a password in a ``postgis`` URL is refused
(put it in a Prefect Secret block named by ``secret=``, or in ``PGPASSWORD``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..features import VectorOptions
from ..io.postgis import redact
from .inbox import Item

__all__ = ["BatchSettings", "batch_settings", "check_folders", "check_targets", "move_password", "one_line"]

VECTOR_FORMATS = ("gpkg", "parquet", "fgb", "geojson")


@dataclass(frozen=True)
class BatchSettings:
    """What every item of a batch is run with (``None``: the model's or segflow's default)."""

    model: str | None = None
    device: str = "auto"
    batch: int = 16
    chunk: int | None = None
    tile: int | None = None
    vector_format: str = "gpkg"
    vector_options: VectorOptions = field(default_factory=VectorOptions)
    postgis: str | None = None  # rasters' polygons go there
    pacs: str | None = None  # DICOM series' SEG goes there

    def targets_for(self, item: Item) -> dict[str, str]:
        """The delivery targets of ``item``'s kind: ``postgis`` for rasters, ``pacs`` for DICOM series."""
        if item.kind == "raster" and self.postgis:
            return {"postgis": self.postgis}
        if item.kind == "dicom" and self.pacs:
            return {"pacs": self.pacs}
        return {}

    def shown(self) -> dict[str, Any]:
        """The settings as a report shows them (passwords hidden)."""
        return {"model": self.model, "device": self.device, "batch": self.batch, "chunk": self.chunk,
                "tile": self.tile, "vector_format": self.vector_format, "min_area": self.vector_options.min_area,
                "postgis": None if self.postgis is None else redact(self.postgis),
                "pacs": None if self.pacs is None else redact(self.pacs)}

    def delivery_rows(self, kind: str, outcome: Any, retries: int = 0) -> dict[str, dict[str, Any]]:
        """The report's delivery entries of an item of ``kind`` from what its delivery step returned
        (``{"delivered": Delivered, "attempts": n}``) or raised (then ``retries`` tells its attempts)."""
        targets = self.targets_for(Item(name="", source="", kind=kind))
        rows: dict[str, dict[str, Any]] = {}
        for name, target in targets.items():
            row: dict[str, Any] = {"target": redact(target)}
            if isinstance(outcome, BaseException):
                from .retry import is_transient

                row.update(status="failed", error=one_line(outcome),
                           attempts=1 + retries if is_transient(outcome) else 1)
            elif outcome is not None and outcome.get("delivered") is not None:
                delivered = outcome["delivered"]
                row.update(status="confirmed", attempts=outcome.get("attempts", 1),
                           count=delivered.rows if name == "postgis" else len(delivered.instances))
            rows[name] = row
        return rows

    def notes(self, items: list[Item]) -> list[str]:
        """What the report should say about targets some items do not go to."""
        out = []
        if self.pacs and not any(i.kind == "dicom" for i in items):
            out.append("--pacs: the PACS receives the DICOM SEG of DICOM series only; this batch has none")
        elif self.pacs and any(i.kind == "nifti" for i in items):
            out.append("--pacs: NIfTI volumes get no DICOM SEG (no DICOM source to refer to), so they are not sent")
        if self.postgis and not any(i.kind == "raster" for i in items):
            out.append("--postgis: PostGIS receives the polygons of rasters only; this batch has none")
        return out


def one_line(exc: BaseException) -> str:
    """An exception as the one line a report shows (segflow's own message, else its type and message)."""
    from ..errors import SegflowError

    text = " ".join(str(exc).split())
    if len(text) > 1000:
        text = text[:1000].rsplit(" ", 1)[0] + " ..."
    return text if isinstance(exc, SegflowError) else f"internal error: {type(exc).__name__}: {text}"


def check_targets(postgis: str | None, pacs: str | None) -> None:
    """Refuse target addresses that do not parse, or that hold a password (which Prefect would store and show
    with a flow run's parameters)."""
    if postgis is not None:
        from ..io.postgis import PostgisTarget

        PostgisTarget.parse(postgis)
        if urlsplit(postgis.strip()).password is not None:
            raise ConfigError(f"the PostGIS address {redact(postgis)!r} holds a password, which Prefect would store "
                              "with the flow run's parameters; put it in a Prefect Secret block named by "
                              "&secret=NAME or in PGPASSWORD")
    if pacs is not None:
        from ..io.pacs import parse_pacs

        if parse_pacs(pacs).given_password is not None:
            raise ConfigError(f"the PACS address {redact(pacs)!r} holds a password, which Prefect would store with "
                              "the flow run's parameters; put it in a Prefect Secret block named by ?secret=NAME or "
                              "in SEGFLOW_PACS_PASSWORD")


def batch_settings(*, model: str | None = None, postgis: str | None = None, pacs: str | None = None,
                   device: str = "auto", batch: int = 16, chunk: int | None = None, tile: int | None = None,
                   vector_format: str = "gpkg", min_area: float = 0.0) -> BatchSettings:
    """Checked settings: the model exists, the device is there, the targets parse and hold no password, the
    options are in range. Every one of these would fail every item, so it is refused once, before any work."""
    if vector_format not in VECTOR_FORMATS:
        raise ConfigError(f"vector format must be one of {', '.join(VECTOR_FORMATS)}, got {vector_format!r}")
    check_targets(postgis, pacs)
    if model is not None:  # the same for every item: refused once, before any work
        from ..models import resolve_package

        resolve_package(model)
    from ..predict import resolve_device

    resolve_device(device)  # a missing CUDA device: refused once
    if batch < 1 or (chunk is not None and chunk < 1) or (tile is not None and tile < 1):
        raise ConfigError(f"batch, chunk and tile must be >= 1, got {batch}, {chunk}, {tile}")
    if min_area < 0:
        raise ConfigError(f"min-area must be >= 0, got {min_area}")
    return BatchSettings(model=model, device=device, batch=batch, chunk=chunk, tile=tile,
                         vector_format=vector_format, vector_options=VectorOptions(min_area=min_area),
                         postgis=postgis, pacs=pacs)


def move_password(url: str | None, environ: Any, variable: str = "PGPASSWORD") -> str | None:
    """``url`` without its password, which goes to ``environ[variable]`` (where segflow reads it: ``PGPASSWORD``
    for PostGIS, ``SEGFLOW_PACS_PASSWORD`` for a PACS).

    For the command line: a batch's parameters are stored by Prefect, the environment of this process is not.
    """
    if url is None:
        return None
    parts = urlsplit(url.strip())
    if parts.password is None:
        return url
    from urllib.parse import unquote

    environ[variable] = unquote(parts.password)
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}@{host}" if user else host).geturl()


def check_folders(inbox: str, output: str) -> None:
    """Refuse an empty ``--inbox`` / ``--output`` (an unset variable in a cron line would make it the current
    folder), a missing inbox, and an output that cannot be a writable folder (before any item runs)."""
    from pathlib import Path

    from ..errors import InputError, OutputError
    from ..io.publish import prepare_output

    if not str(inbox).strip():
        raise ConfigError("--inbox is empty; give a folder of scenes and volumes or a text file of paths")
    if not str(output).strip():
        raise ConfigError("--output is empty; give the folder for the items' outputs and the report")
    if not Path(inbox).exists():
        raise InputError(f"inbox {inbox} does not exist; give a folder of scenes and volumes or a text file of paths")
    folder = Path(output)
    prepare_output(folder)
    probe = folder / ".segflow-write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write to output folder {folder} ({exc.strerror or exc}); choose a writable "
                          "--output") from None
