"""The items of a night's batch: what an inbox holds.

An inbox is a folder or a text file. In a folder, every file whose name matches one of the
patterns (default :data:`PATTERNS`, case-insensitive, searched recursively, hidden entries
skipped) is an item, and so is every folder that directly holds DICOM files (a series; files
with the ``DICM`` marker at byte 128). A text file lists one path per line (a raster, a volume or
a DICOM folder; relative paths are relative to the list's folder; blank lines and ``#`` comments
skipped). Files modified less than ``min_age`` seconds ago are left for the next batch (they may
still be arriving).

Each item gets a name, unique in the batch and the same every night for the same path: its path
relative to the inbox without the image suffix, folders joined by ``__`` (``2024/T33UVP.tif`` →
``2024__T33UVP``). Two items whose names would collide (``a.tif`` and ``a.nii.gz``) keep their
suffix (``a_tif``, ``a_nii_gz``). The name is the item's output folder and its PostGIS ``scene_id``.
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, InputError

__all__ = ["PATTERNS", "Item", "discover"]

PATTERNS = ("*.tif", "*.tiff", "*.nii", "*.nii.gz")
_SUFFIXES = (".nii.gz", ".tiff", ".tif", ".nii", ".vrt", ".jp2", ".img", ".dcm")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Item:
    """One scene or volume of a batch: ``source`` (a file, or a DICOM series folder), its ``name`` and ``kind``.

    ``kind`` is ``raster``, ``nifti`` or ``dicom``: it decides the exports (polygons and PostGIS for
    rasters, DICOM SEG and the PACS for DICOM series).
    """

    name: str
    source: str
    kind: str


def _kind(path: Path) -> str:
    if path.is_dir():
        return "dicom"
    lower = path.name.lower()
    return "nifti" if lower.endswith((".nii", ".nii.gz")) else "raster"


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _stem(relative: str) -> str:
    lower = relative.lower()
    for suffix in _SUFFIXES:
        if lower.endswith(suffix) and len(relative) > len(suffix):
            return relative[: -len(suffix)]
    return relative


def _safe(text: str) -> str:
    parts = [p for p in text.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return "__".join(_UNSAFE.sub("_", p) for p in parts) or "item"


def _named(found: Sequence[tuple[str, Path]]) -> list[Item]:
    """Items from (path relative to the inbox, path), named as the module docstring says."""
    stems = [_safe(_stem(rel)) for rel, _ in found]
    taken = Counter(stems)
    items = []
    for (rel, path), stem in zip(found, stems, strict=True):
        name = stem if taken[stem] == 1 else _safe(rel.replace(".", "_"))
        items.append(Item(name=name, source=str(path), kind=_kind(path)))
    if len({i.name for i in items}) != len(items):
        twice = sorted(n for n, c in Counter(i.name for i in items).items() if c > 1)
        raise ConfigError(f"the inbox holds several items named {twice[0]!r}; rename one of them")
    return sorted(items, key=lambda i: i.name)


def _settled(path: Path, min_age: float, now: float) -> bool:
    if min_age <= 0:
        return True
    files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
    try:
        return all(now - f.stat().st_mtime >= min_age for f in files)
    except OSError:
        return False


def _scan(folder: Path, patterns: Sequence[str], exclude: Sequence[Path]) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    wanted = [p.lower() for p in patterns]
    skip = {p.resolve() for p in exclude}
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() not in skip)
        visible = sorted(f for f in files if not f.startswith("."))
        if any(_is_dicom(here / f) for f in visible[:8]) and here != folder:
            found.append((str(here.relative_to(folder)), here))  # a series folder: one item, its files not items
            continue
        for name in visible:
            if any(fnmatch.fnmatchcase(name.lower(), p) for p in wanted):
                found.append((str((here / name).relative_to(folder)), here / name))
    return found


def _listed(listing: Path) -> list[tuple[str, Path]]:
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the inbox list {listing} ({exc}); give a folder or a text file of paths") \
            from None
    found = []
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        path = Path(text) if Path(text).is_absolute() else listing.parent / text
        try:
            relative = str(path.relative_to(listing.parent))
        except ValueError:
            relative = path.name
        found.append((relative, path))
    return found


def discover(inbox: str | os.PathLike[str], patterns: Sequence[str] = PATTERNS, *, min_age: float = 0.0,
             exclude: Sequence[str | os.PathLike[str]] = ()) -> list[Item]:
    """The items of ``inbox`` (a folder or a text file of paths), sorted by name.

    Folders in ``exclude`` (the batch's output folder, when it lies inside the inbox) are not searched.
    A listed path that does not exist is still an item: processing it fails with its own message,
    which the night's report shows.
    """
    root = Path(inbox)
    if root.is_dir():
        found = _scan(root, patterns or PATTERNS, [Path(p) for p in exclude])
    elif root.is_file():
        found = _listed(root)
    else:
        raise InputError(f"inbox {root} does not exist; give a folder of scenes and volumes or a text file of paths")
    now = time.time()
    return _named([(rel, path) for rel, path in found if not path.exists() or _settled(path, min_age, now)])
