"""Deliver a published run to the systems that consume it: its DICOM SEG to a PACS, its polygons to PostGIS.

Both happen only after the run's outputs are published, read what was published, and are
confirmed by the target (a QIDO-RS / C-FIND query finds every instance; the table holds exactly
the scene's rows) before a receipt is written beside the outputs (``pacs.json``, ``postgis.json``,
:mod:`segflow.io.receipt`). A run with a receipt for the same files and target delivers nothing
again, so a batch that re-runs every night delivers each result exactly once, and a delivery that
failed (no receipt) is tried again on the next run without computing the masks again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .pacs import PacsTarget, deliver_once
from .receipt import file_digests, read_receipt, write_receipt

if TYPE_CHECKING:
    from .postgis import PostgisTarget

__all__ = ["DICOM_SEG", "PACS_RECEIPT", "POSTGIS_RECEIPT", "Delivered", "VectorFile", "deliver_run"]

DICOM_SEG = "seg.dcm"
PACS_RECEIPT = "pacs.json"
POSTGIS_RECEIPT = "postgis.json"


@dataclass(frozen=True)
class VectorFile:
    """A published vector file of a run: its name in the output folder, format and the rows' scene id."""

    name: str
    fmt: str
    scene_id: str


@dataclass(frozen=True)
class Delivered:
    """What the targets confirmed: SOP Instance UIDs at the PACS, rows in the PostGIS table (None: not asked)."""

    instances: tuple[str, ...] = ()
    rows: int | None = None


def deliver_postgis_once(output: Path, vectors: VectorFile, target: PostgisTarget, *, attempts: int = 3) -> int:
    """Write the published polygons into ``target`` unless ``postgis.json`` shows them confirmed there."""
    from .postgis import write_postgis
    from .vector_files import read_features

    path = output / vectors.name
    files = file_digests([path])
    receipt = output / POSTGIS_RECEIPT
    done = read_receipt(receipt, f"{target} scene_id={vectors.scene_id}", files)
    if done is not None and isinstance(done.get("rows"), int):
        return int(done["rows"])
    info, batches = read_features(path, vectors.fmt, vectors.scene_id)
    rows = write_postgis(target, info, batches, attempts=attempts)
    write_receipt(receipt, f"{target} scene_id={vectors.scene_id}", files, rows=rows, table=target.table_name)
    return rows


def deliver_run(output: Path, *, pacs: PacsTarget | None = None, postgis: PostgisTarget | None = None,
                vectors: VectorFile | None = None, attempts: int = 3) -> Delivered:
    """Deliver the published outputs in ``output`` to the targets given; raise DeliveryError (or OutputError) if
    a target is down, refuses or does not confirm. Each target is independent: what was confirmed keeps its
    receipt even when the other fails. ``attempts``: tries per target for transient failures (1: the caller
    retries, e.g. a batch's own retries)."""
    instances: tuple[str, ...] = ()
    rows = None
    if pacs is not None:
        instances = tuple(deliver_once([output / DICOM_SEG], pacs, output / PACS_RECEIPT, attempts=attempts))
    if postgis is not None:
        if vectors is None:
            raise ValueError("a PostGIS delivery needs the run's vector file")
        rows = deliver_postgis_once(output, vectors, postgis, attempts=attempts)
    return Delivered(instances, rows)
