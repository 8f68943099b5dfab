"""The items of a night's batch: what an inbox holds.

An inbox is a folder or a text file. In a folder, every file whose name matches one of the
patterns (default :data:`PATTERNS`, case-insensitive, searched recursively, following links to
folders, hidden entries skipped) is an item, and so is every folder that directly holds DICOM files
(a series; files with the ``DICM`` marker at byte 128). Folders holding segflow outputs (a
``run.json`` beside a ``mask.zarr``, or a batch's ``report.json``) are not searched. A text file
lists one path per line (a raster, a volume or a DICOM folder; relative paths are relative to the
list's folder; blank lines and ``#`` comments skipped). Files modified less than ``min_age`` seconds
ago are left for the next batch (they may still be arriving): :func:`discover` returns them apart.

Each item gets a name that depends on its own path only, so it is the same every night whatever
else arrives, and differs for different paths: its path relative to the inbox (a listed path
outside the list's folder: the whole path), folders joined by ``__``, with the file's suffix kept
(``2024/T33UVP.tif`` → ``2024__T33UVP.tif``, a DICOM folder ``p1/ct`` → ``p1__ct``). Characters other
than letters, digits, ``.``, ``_`` and ``-`` become ``_``, and then (as it could make two paths alike,
as could a ``__`` in a name) 8 hex digits of the path's SHA-1 are appended. The name is the item's
output folder and its PostGIS ``scene_id``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, InputError

__all__ = ["PATTERNS", "Item", "discover", "item_name", "waiting"]

PATTERNS = ("*.tif", "*.tiff", "*.nii", "*.nii.gz")
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


def item_name(relative: str) -> str:
    """The name of the item at ``relative`` (see the module docstring)."""
    parts = [p for p in relative.replace("\\", "/").split("/") if p not in ("", ".")]
    safe = [_UNSAFE.sub("_", p) for p in parts]
    name = "__".join(safe) or "item"
    if safe != parts or name.startswith(".") or any("__" in p for p in parts):  # "a__b" would read as "a/b"
        name = f"{name.lstrip('.') or 'item'}-{hashlib.sha1(relative.encode('utf-8')).hexdigest()[:8]}"
    return name


def _named(found: Sequence[tuple[str, Path]]) -> list[Item]:
    """Items from (path relative to the inbox, path)."""
    items: dict[str, Item] = {}
    for rel, path in found:
        name = item_name(rel)
        items.setdefault(name, Item(name=name, source=str(path), kind=_kind(path)))  # the same path listed twice
    return sorted(items.values(), key=lambda i: i.name)


def _settled(path: Path, min_age: float, now: float) -> bool:
    if min_age <= 0:
        return True
    files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
    try:
        return all(now - f.stat().st_mtime >= min_age for f in files)
    except OSError:
        return False


def _is_output(folder: Path, names: Sequence[str]) -> bool:
    """Whether ``folder`` holds segflow outputs: an item's run (run.json beside mask.zarr) or a batch's report."""
    return ("run.json" in names and (folder / "mask.zarr").is_dir()) or "report.json" in names


def _scan(folder: Path, patterns: Sequence[str], exclude: Sequence[Path]) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    wanted = [p.lower() for p in patterns]
    skip = {p.resolve() for p in exclude}
    seen: set[Path] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        here = Path(root)
        real = here.resolve()
        visible = sorted(f for f in files if not f.startswith("."))
        if real in seen or real in skip or (here != folder and _is_output(here, [*visible, *dirs])):
            dirs[:] = []  # a link cycle, the batch's own output, or another segflow output
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not d.endswith(".zarr"))
        if here != folder and any(_is_dicom(here / f) for f in visible[:8]):
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
        raise InputError(f"cannot read {listing} as an inbox list ({type(exc).__name__}); give a folder or a text "
                         "file with one path per line") from None
    if "\x00" in "".join(lines[:50]):
        raise InputError(f"{listing} is not a text file of paths; give a folder or a text file with one path per "
                         "line as --inbox")
    found = []
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        path = Path(os.path.normpath(listing.parent / text))  # an absolute path stays itself
        try:
            relative = str(path.relative_to(Path(os.path.normpath(listing.parent))))
        except ValueError:
            relative = str(path)  # outside the list's folder: the whole path names it
        found.append((relative, path))
    return found


def discover(inbox: str | os.PathLike[str], patterns: Sequence[str] = PATTERNS, *, min_age: float = 0.0,
             exclude: Sequence[str | os.PathLike[str]] = ()) -> list[Item]:
    """The items of ``inbox`` (a folder or a text file of paths) ready tonight, sorted by name.

    Folders in ``exclude`` (the batch's output folder, when it lies inside the inbox) are not searched.
    A listed path that does not exist is still an item: processing it fails with its own message,
    which the night's report shows. Items still arriving are in :func:`waiting`.
    """
    return _discover(inbox, patterns, min_age, exclude)[0]


def waiting(inbox: str | os.PathLike[str], patterns: Sequence[str] = PATTERNS, *, min_age: float = 0.0,
            exclude: Sequence[str | os.PathLike[str]] = ()) -> list[Item]:
    """The items of ``inbox`` left for the next batch: modified less than ``min_age`` seconds ago."""
    return _discover(inbox, patterns, min_age, exclude)[1]


def _discover(inbox: str | os.PathLike[str], patterns: Sequence[str], min_age: float,
              exclude: Sequence[str | os.PathLike[str]]) -> tuple[list[Item], list[Item]]:
    if not str(inbox).strip():
        raise ConfigError("--inbox is empty; give a folder of scenes and volumes or a text file of paths")
    root = Path(inbox)
    if root.is_dir():
        found = _scan(root, patterns or PATTERNS, [Path(p) for p in exclude])
    elif root.is_file():
        found = _listed(root)
    else:
        raise InputError(f"inbox {root} does not exist; give a folder of scenes and volumes or a text file of paths")
    now = time.time()
    items = _named(found)
    sources = {i.source: i for i in items}
    late = {str(path) for _, path in found if path.exists() and not _settled(path, min_age, now)}
    return [i for i in items if i.source not in late], [sources[s] for s in sorted(late)]
