"""Delivery receipts: a JSON record, beside the outputs, of files a target has confirmed storing.

A delivery (DICOM SEG to a PACS, polygons to PostGIS) writes its receipt atomically only after
the target confirmed it (a query found the instances, the table holds the rows). A later run
that finds a receipt for the same target and the same file contents does not deliver again; a
delivery that failed left no receipt, so the next run delivers. The target is recorded as shown
to users (passwords hidden).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text

__all__ = ["file_digests", "read_receipt", "write_receipt"]


def file_digests(paths: Sequence[Path]) -> dict[str, str]:
    """SHA-256 (hex) of each file, by name."""
    from ..models.archive import sha256_file

    return {path.name: sha256_file(path) for path in paths}


def read_receipt(receipt: Path, target: str, files: dict[str, str]) -> dict[str, Any] | None:
    """The receipt's record when it confirms these very files at ``target``, else None."""
    try:
        record = json.loads(receipt.read_text(encoding="utf-8"))
        if record["target"] == target and record["files"] == files:
            return dict(record)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def write_receipt(receipt: Path, target: str, files: dict[str, str], **confirmed: Any) -> None:
    """Record (atomically) that ``target`` confirmed ``files``, with what it confirmed (UIDs, row counts)."""
    record = {"target": target, "files": files, **confirmed,
              "confirmed_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_text(receipt, json.dumps(record, indent=2) + "\n")
