"""One item of a batch: its tile-infer run, its delivery, and what its outputs hold.

Each step is one library call that a Prefect task (``pipelines/batch_flow.py``) or a plain loop
wraps. The run is :func:`segflow.tile_infer.tile_infer` into ``<output>/<item name>/`` with the
exports the item's kind calls for: rasters get their objects as polygons (``--vectorize``, the
table PostGIS receives), DICOM series their DICOM SEG (which the PACS receives), every volume its
NIfTI labels and instances. Whether an item needs work is the run's own decision (its fingerprint,
:mod:`segflow.run_store`): an item processed before with the same model and parameters is not
computed again, a half-finished one resumes, a changed model or parameter processes it again.
Delivery is a separate step after the run, so a delivery that failed is retried on the next
night without computing the masks again (:mod:`segflow.io.deliver`, receipts beside the outputs).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import Execution
from ..errors import ConfigError
from ..io.deliver import DICOM_SEG, Delivered, VectorFile, deliver_run
from ..io.vector_files import vector_name
from ..run_params import TileInferParams
from .inbox import Item
from .settings import BatchSettings

__all__ = ["ItemRun", "deliver_item", "infer_item", "item_params", "summarize"]


def item_params(item: Item, settings: BatchSettings, *, deliver: bool = False) -> TileInferParams:
    """The tile-infer parameters of ``item``: the exports its kind calls for (see the module docstring)."""
    raster = item.kind == "raster"
    return TileInferParams(model=settings.model, tile=settings.tile, chunk=settings.chunk, batch=settings.batch,
                           device=settings.device, vectorize=settings.vector_format if raster else None,
                           vector_options=settings.vector_options, postgis=settings.postgis if raster else None,
                           pacs=settings.pacs if item.kind == "dicom" else None,
                           scene_id=item.name if raster else None,
                           deliver=deliver)


@dataclass(frozen=True)
class ItemRun:
    """How an item's run went: ``status`` is ``computed``, ``resumed`` (chunks of an earlier attempt reused),
    ``re-exported`` (its masks were already this run's, its exports' options changed) or ``unchanged``."""

    status: str
    windows_evaluated: int
    windows_skipped: int
    chunks_computed: int
    chunks_reused: int
    wall_seconds: float
    megapixels: float
    outputs: tuple[str, ...]


def infer_item(item: Item, output: str | Path, settings: BatchSettings,
               execution: Execution | None = None) -> ItemRun:
    """Run tile-infer for ``item`` into ``output/<name>`` (deliveries are :func:`deliver_item`'s)."""
    from ..tile_infer import tile_infer

    result = tile_infer(item.source, Path(output) / item.name, item_params(item, settings), execution=execution)
    if result.reexported:
        status = "re-exported"
    elif result.chunks_computed == 0 and result.windows_evaluated == 0:
        status = "unchanged"
    else:
        status = "resumed" if result.chunks_reused else "computed"
    return ItemRun(status=status, windows_evaluated=result.windows_evaluated,
                   windows_skipped=result.windows_skipped, chunks_computed=result.chunks_computed,
                   chunks_reused=result.chunks_reused, wall_seconds=round(result.wall_seconds, 3),
                   megapixels=result.megapixels, outputs=tuple(sorted(result.outputs)))


def deliver_item(item: Item, output: str | Path, settings: BatchSettings) -> Delivered | None:
    """Deliver ``item``'s published outputs to the targets its kind has (None: no target for it).

    Confirmed deliveries leave receipts, so calling this again delivers nothing twice.
    """
    folder = Path(output) / item.name
    pacs = settings.pacs if item.kind == "dicom" else None
    postgis = settings.postgis if item.kind == "raster" else None
    if pacs is None and postgis is None:
        return None
    if not (folder / "run.json").is_file():
        raise ConfigError(f"{item.name} has no published run in {folder}; run it before delivering it")
    from ..io.pacs import parse_pacs

    vectors = None
    target = None
    if postgis is not None:
        from ..io.postgis import PostgisTarget

        target = PostgisTarget.parse(postgis)
        vectors = VectorFile(vector_name(settings.vector_format), settings.vector_format, item.name)
    # one attempt per call: the batch retries transient failures itself, with its own backoff
    return deliver_run(folder, pacs=None if pacs is None else parse_pacs(pacs), postgis=target, vectors=vectors,
                       attempts=1)


def _store_geometry(folder: Path) -> tuple[list[str], float, str]:
    """Class names, the size of one pixel (map units²) or voxel (mL), and its unit, from ``mask.zarr``."""
    attrs = json.loads((folder / "mask.zarr" / "zarr.json").read_text(encoding="utf-8"))["attributes"]
    names = [str(n) for n in attrs.get("class_names", [])]
    if attrs.get("affine") is not None:
        affine = np.asarray(attrs["affine"], dtype=float)
        return names, abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0, "mL"
    transform = attrs.get("transform")
    if not transform:
        return names, 1.0, "px"
    a, b, _, d, e, _ = (float(v) for v in transform[:6])
    from ..io.instances_sink import area_column

    return names, abs(a * e - b * d), area_column(attrs.get("crs")).removeprefix("area_")


def _histogram(folder: Path, classes: int) -> np.ndarray:
    from ..io.mask_store import MaskStore

    store = MaskStore.open(folder / "mask.zarr")
    if store.multilabel:  # classes may overlap: each class's own pixels, plane by plane, chunk by chunk
        from ..tiling import ChunkGrid

        per_class = np.zeros(classes, dtype=np.int64)
        for k, (_, region) in itertools.product(range(classes), ChunkGrid.create(store.shape, store.spatial_chunk)):
            per_class[k] += np.count_nonzero(store.read_present(region, k) == 1)
        return per_class
    counts = np.zeros(256, dtype=np.int64)
    for index in np.ndindex(*store.labels.cdata_shape):
        box = tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, store.labels.chunks, strict=True))
        counts += np.bincount(np.asarray(store.labels[box]).ravel(), minlength=256)
    return counts[:classes]


def _objects(folder: Path, settings: BatchSettings) -> Counter[str]:
    """Objects per class: the rows of the vector file (rasters) or of instances.csv (volumes)."""
    vectors = folder / vector_name(settings.vector_format)
    if vectors.exists():  # the class column only, no geometry
        if settings.vector_format == "parquet":
            import pyarrow.parquet as pq

            column = pq.read_table(vectors, columns=["class_name"]).column("class_name")
        else:
            import pyogrio

            column = pyogrio.read_arrow(vectors, columns=["class_name"], read_geometry=False)[1].column("class_name")
        return Counter(str(c) for c in column.to_pylist())
    table = folder / "instances.csv"
    if table.exists():
        with open(table, newline="", encoding="utf-8") as f:
            return Counter(row["class"] for row in csv.DictReader(f))
    return Counter()


def summarize(item: Item, output: str | Path, settings: BatchSettings) -> dict[str, Any]:
    """What ``item``'s published outputs hold: objects, and area (map units², ``unit``) or volume (mL) per class."""
    folder = Path(output) / item.name
    names, size, unit = _store_geometry(folder)
    histogram = _histogram(folder, len(names))
    objects = _objects(folder, settings)
    per_class: dict[str, dict[str, float | int]] = defaultdict(dict)
    for k, name in enumerate(names):
        extent = float(histogram[k]) * size
        per_class[name] = {"pixels": int(histogram[k]),  # voxels for a volume
                           "extent": float(f"{extent:.6g}") if math.isfinite(extent) else 0.0,
                           "objects": int(objects.get(name, 0))}
    return {"unit": unit, "classes": dict(per_class), "seg": (folder / DICOM_SEG).exists()}
