"""Sinks: exports built from the finished mask store, chosen by the scene's geometry, not by file format.

A sink names the output entry it makes and writes it into the run's staging folder from the
store. Today: ``labels.tif`` (COG) for rasters. NIfTI labels and DICOM SEG for volumes, and
vector exports, plug in here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..geometry import Geometry, RasterGeometry
from .cog import write_label_cog
from .mask_store import MaskStore

if TYPE_CHECKING:
    from ..models.package import ModelSpec

__all__ = ["LabelCOGSink", "Sink", "sinks_for"]


class Sink(Protocol):
    @property
    def name(self) -> str:
        """The output entry this sink makes (e.g. ``labels.tif``)."""
        ...

    def write(self, store: MaskStore, folder: Path) -> Path:
        """Write this sink's output into ``folder`` from the finished ``store``; return its path."""
        ...


@dataclass(frozen=True)
class LabelCOGSink:
    """``labels.tif``: a Cloud-Optimized GeoTIFF of the labels on the scene's exact grid, with the class colours."""

    geometry: RasterGeometry
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int] | None, ...]
    name: str = "labels.tif"

    def write(self, store: MaskStore, folder: Path) -> Path:
        return write_label_cog(store, folder / self.name, self.geometry, self.class_names, self.colors)


def sinks_for(geometry: Geometry, spec: ModelSpec) -> Sequence[Sink]:
    """The exports a scene of this geometry gets."""
    if isinstance(geometry, RasterGeometry):
        return [LabelCOGSink(geometry, tuple(spec.class_names), tuple(c.color for c in spec.classes))]
    return []
