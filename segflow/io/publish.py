"""Atomic publication of outputs: build everything in a staging folder, then rename into place.

A failed run leaves the output folder as it was: earlier good outputs are never damaged and
nothing half-written appears under the final names.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from types import TracebackType

from ..errors import OutputError

__all__ = ["Staging"]


def _prepare(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise OutputError(f"output {output} exists and is not a directory; choose a directory for --output")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create output directory {output} ({exc.strerror}); choose another --output"
        ) from None


class Staging:
    """A hidden staging folder inside ``output``; :meth:`publish` renames its entries into place."""

    def __init__(self, output: str | os.PathLike[str]):
        self.output = Path(output)
        _prepare(self.output)
        self.path = self.output / f".segflow-staging-{uuid.uuid4().hex[:12]}"
        try:
            self.path.mkdir()
        except OSError as exc:
            raise OutputError(
                f"cannot write to output directory {self.output} ({exc.strerror}); choose a writable --output"
            ) from None

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.discard()

    def publish(self, names: list[str]) -> dict[str, Path]:
        """Move the staged entries ``names`` to ``output``, in that order, each atomically."""
        done = {}
        for name in names:
            staged, final = self.path / name, self.output / name
            if staged.is_dir() and final.exists():
                old = self.output / f".segflow-old-{uuid.uuid4().hex[:12]}-{name}"
                os.replace(final, old)
                os.replace(staged, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staged, final)
            done[name] = final
        return done

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
