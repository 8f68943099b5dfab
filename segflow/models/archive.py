"""Model package archives: ``.zip``, ``.tar``, ``.tar.gz`` / ``.tgz`` of a package directory.

An archive is unpacked once into a cache folder named by the archive's SHA-256
(``$SEGFLOW_CACHE/packages/<sha256>/``, default ``~/.cache/segflow/packages/<sha256>/``).
Unpacking is safe and atomic: every member is checked first (no absolute paths, no ``..``,
no links pointing outside the package, no device files or FIFOs), the members are written
into a temporary folder next to the final one, and that folder is renamed into place only
when complete. The package's ``model.yaml`` may sit at the archive's root or inside a single
top-level folder.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

from ..errors import ModelError
from ..io.atomic import publish_path, temporary_sibling

__all__ = ["ARCHIVE_SUFFIXES", "cache_root", "extract_package_archive", "is_archive", "sha256_file"]

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
_IGNORED_TOP = {"__MACOSX"}


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_archive(path: Path) -> bool:
    """True when ``path`` is a file whose name ends in one of :data:`ARCHIVE_SUFFIXES`."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def cache_root() -> Path:
    """Folder that holds unpacked archives: ``$SEGFLOW_CACHE/packages`` or ``~/.cache/segflow/packages``."""
    base = os.environ.get("SEGFLOW_CACHE")
    if base:
        return Path(base).expanduser() / "packages"
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return root / "segflow" / "packages"


def _unsafe(archive: Path, member: str, why: str) -> ModelError:
    return ModelError(
        f"refusing to unpack {archive.name}: member {member!r} {why}; "
        "re-create the archive from the package directory (e.g. tar czf pkg.tar.gz -C parent pkg)"
    )


def _check_name(archive: Path, name: str) -> str:
    """The member's normalised relative path; refuses absolute paths and ``..``."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise _unsafe(archive, name, "has an absolute path")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _unsafe(archive, name, "climbs out of the package with '..'")
    return "/".join(parts)


def _check_link_target(archive: Path, member: str, target: str, *, relative_to_member: bool) -> None:
    """Refuse a link whose target lies outside the package (checked on the normalised path)."""
    clean = target.replace("\\", "/")
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise _unsafe(archive, member, f"is a link to the absolute path {target!r}")
    base = posixpath.dirname(member) if relative_to_member else ""
    resolved = posixpath.normpath(posixpath.join(base, clean))
    if resolved == ".." or resolved.startswith("../"):
        raise _unsafe(archive, member, f"is a link pointing outside the package ({target!r})")


def _extract_tar(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                name = _check_name(archive, m.name)
                if m.issym():
                    _check_link_target(archive, name, m.linkname, relative_to_member=True)
                elif m.islnk():
                    _check_link_target(archive, name, m.linkname, relative_to_member=False)
                elif not (m.isfile() or m.isdir()):
                    raise _unsafe(archive, m.name, "is a device file, FIFO or other special file")
            # The "data" filter re-checks every member against the real destination (links through
            # links included) and drops set-uid bits; anything it refuses is refused here too.
            tar.extractall(dest, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise _unsafe(archive, getattr(exc.tarinfo, "name", "?"), f"is unsafe ({exc})") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ModelError(f"cannot unpack {archive}: {exc}; check that it is a complete .tar/.tar.gz file") from None


def _extract_zip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_name(archive, info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise _unsafe(archive, info.filename, "is a symbolic link (not supported in zip packages)")
                if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    raise _unsafe(archive, info.filename, "is a device file, FIFO or other special file")
            for info in infos:
                name = _check_name(archive, info.filename)
                if not name:
                    continue
                target = dest / name
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise ModelError(f"cannot unpack {archive}: {exc}; check that it is a complete .zip file") from None


def _package_dir(archive: Path, root: Path) -> Path:
    """The folder in the unpacked archive that holds ``model.yaml``."""
    if (root / "model.yaml").is_file():
        return root
    entries = [p for p in root.iterdir() if p.name not in _IGNORED_TOP]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "model.yaml").is_file():
        return entries[0]
    raise ModelError(
        f"{archive} is not a model package archive: expected model.yaml at its root or in a single "
        f"top-level folder, found {sorted(p.name for p in entries)[:5]}"
    )


def extract_package_archive(archive: Path, sha256: str | None = None) -> Path:
    """Unpack ``archive`` (once) into the cache and return the package directory inside it.

    Parameters
    ----------
    archive : Path
        A ``.zip``, ``.tar``, ``.tar.gz`` or ``.tgz`` file holding one model package.
    sha256 : str, optional
        The archive's SHA-256 when already known (saves reading it twice).

    Returns
    -------
    Path
        The folder holding ``model.yaml``, under ``cache_root() / <sha256>``.
    """
    digest = sha256 or sha256_file(archive)
    final = cache_root() / digest
    if not final.is_dir():
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            temp = temporary_sibling(final)
            temp.mkdir()
        except OSError as exc:
            raise ModelError(
                f"cannot create the package cache {final.parent} ({exc.strerror or exc}); set SEGFLOW_CACHE to a "
                "writable folder"
            ) from None
        try:
            if archive.name.lower().endswith(".zip"):
                _extract_zip(archive, temp)
            else:
                _extract_tar(archive, temp)
            _package_dir(archive, temp)  # refuse non-packages before they reach the cache
            try:
                publish_path(temp, final, replace=False)  # a cache entry is never replaced
            except OSError:
                if not final.is_dir():  # not a lost race with another process: a real failure
                    raise
        except OSError as exc:
            raise ModelError(f"cannot unpack {archive} into {final.parent}: {exc}") from None
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    return _package_dir(archive, final)
