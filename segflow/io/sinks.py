"""Sinks: exports built from the finished mask store, chosen by the scene's geometry, not by file format.

A sink names the output entry it makes and writes it into the run's staging folder from the
store. Today: ``labels.tif`` (COG) for rasters. NIfTI labels and DICOM SEG for volumes, and
vector exports, plug in here.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..geometry import RasterGeometry
from .cog import PAM_SUFFIX, write_label_cog
from .mask_store import MaskStore
from .readback import verify_label_raster
from .space import is_disk_full, native_stderr, space_error

if TYPE_CHECKING:
    from ..models.package import ModelSpec
    from ..scene import Scene

__all__ = ["LabelCOGSink", "Sink", "sinks_for", "write_sinks"]


class Sink(Protocol):
    @property
    def name(self) -> str:
        """The output entry this sink makes (e.g. ``labels.tif``)."""
        ...

    @property
    def entries(self) -> tuple[str, ...]:
        """Every output entry this sink makes, in publication order, ``name`` last (its sidecars first)."""
        ...

    def write(self, store: MaskStore, folder: Path) -> Path:
        """Write this sink's output into ``folder`` from the finished ``store``; return its path.

        It returns only once the output reads back as written (see :mod:`segflow.io.readback`).
        """
        ...


@dataclass(frozen=True)
class LabelCOGSink:
    """``labels.tif``: a Cloud-Optimized GeoTIFF of the labels on the scene's exact grid, with the class colours."""

    geometry: RasterGeometry
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int] | None, ...]
    name: str = "labels.tif"

    @property
    def entries(self) -> tuple[str, ...]:
        return (self.name + PAM_SUFFIX, self.name)  # the class table (GDAL PAM sidecar) comes along

    def write(self, store: MaskStore, folder: Path) -> Path:
        path = write_label_cog(store, folder / self.name, self.geometry, self.class_names, self.colors)
        verify_label_raster(path, store)
        return path


def sinks_for(scene: Scene, spec: ModelSpec, *, meshes: bool = False, vectors: Sink | None = None,
              panoptic: bool = False) -> Sequence[Sink]:
    """The exports a scene gets: chosen by its geometry (raster or volume) and, for exports that
    go back to where the scene came from (DICOM SEG for a DICOM series), by ``scene.meta["format"]``.

    ``meshes``: also a surface mesh per instance (``meshes/``, after ``instances.csv``, whose ids it
    meshes); a 2D raster or a model without a thing class is refused with a ConfigError. ``vectors``:
    a :class:`~segflow.io.vector_sink.VectorSink` for a raster's objects as polygons (``--vectorize``), which
    also brings ``quicklook.png`` (:mod:`segflow.io.quicklook`). ``panoptic``: ``panoptic.tif``, class and
    instance ids (:mod:`segflow.io.panoptic`; refused for volumes and models without a thing class).

    A multi-label model (:mod:`segflow.multilabel`) gets the exports that can show overlapping classes
    (labels.tif with a band per class, polygons per class, a 4D labels.nii.gz, a SEG with overlapping
    segments); ``quicklook.png`` and a volume's ``instances.csv``, which show one class per pixel, are
    not made (the options that ask for such outputs are refused by :func:`segflow.multilabel.check_run`).
    An instance model's raster run (:mod:`segflow.detect`) also gets ``instances.csv``: its objects, with
    their detection scores."""
    geometry = scene.geometry
    if meshes:
        from .meshes import MeshesSink  # checks the scene and the model before anything runs

        meshes_sink = MeshesSink.for_scene(scene, spec)
    extra: list[Sink] = []
    if panoptic:
        from .panoptic import PanopticSink

        extra.append(PanopticSink.for_scene(scene, spec))
    if isinstance(geometry, RasterGeometry):
        if spec.instances:  # an instance model's objects, numbered already: their table too
            from .instances_sink import InstancesSink

            extra.append(InstancesSink(scene, spec))
        cog = LabelCOGSink(geometry, tuple(spec.class_names), tuple(c.color for c in spec.classes))
        if vectors is None or spec.multilabel:
            return [cog, *extra, *([] if vectors is None else [vectors])]
        from .quicklook import QuicklookSink  # with the objects: the scene, its labels and their outlines

        return [cog, *extra, vectors, QuicklookSink(scene, spec)]
    sinks: list[Sink] = []
    from .nifti_sink import nifti_label_sink  # labels.nii.gz for every volume

    sinks.append(nifti_label_sink(scene, spec))
    if scene.meta.get("format") == "dicom":
        from .dicom_seg import DicomSegSink  # highdicom is imported for DICOM inputs only

        sinks.append(DicomSegSink.for_scene(scene, spec))
    if any(c.kind == "thing" for c in spec.classes) and not spec.multilabel:
        from .instances_sink import InstancesSink  # instances.csv + the instances array of mask.zarr

        sinks.append(InstancesSink(scene, spec))
    if meshes:
        sinks.append(meshes_sink)  # reads the instances array the InstancesSink wrote
    return sinks


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_sinks(sinks: Sequence[Sink], store: MaskStore, folder: Path, *, needed: int | None = None) -> None:
    """Write every sink's output into ``folder``, replacing what an earlier attempt left there.

    What GDAL and libtiff print meanwhile is captured: a full disk becomes one
    :class:`~segflow.errors.OutputError` (even when the writer itself reported success), and a
    failed sink's partial output is removed. ``needed`` (bytes) goes into that message.
    """
    for sink in sinks:
        targets = [folder / entry for entry in sink.entries]
        for target in targets:
            _remove(target)
        error: Exception | None = None
        with native_stderr() as native:
            try:
                sink.write(store, folder)
            except Exception as exc:  # judged below, once the captured messages are known
                error = exc
        if error is None and not is_disk_full(None, native.text):
            continue
        for target in targets:
            _remove(target)
        if is_disk_full(error, native.text):
            raise space_error(folder.parent, needed, sink.name) from None
        assert error is not None
        raise error
