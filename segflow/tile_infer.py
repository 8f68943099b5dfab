"""tile-infer: a raster of any size → overlapping-window inference → zarr mask → COG.

This is the library call behind ``segflow run tile-infer`` and the Prefect flow.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from ._memory import limit_heap_fragmentation
from .bands import assemble_scene, parse_inputs
from .errors import ConfigError, InputError
from .io.cog import LabelRasterWriter
from .io.geotiff import gdal_cache_limit, open_geotiff
from .io.publish import Staging
from .io.zarr_store import MaskStore
from .models import ModelPackage, load_module, resolve_package
from .predict import Predictor
from .stitch import LABEL_NODATA, BlendedChunk, BlendStats, blend_chunks
from .tiling import BLEND_MODES, Box, ChunkGrid, WindowGrid, blend_weights

__all__ = ["DEFAULT_MODEL", "RunResult", "TileInferParams", "tile_infer"]

DEFAULT_MODEL = "spectral-landcover"
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TileInferParams:
    """Every knob of a tile-infer run (``None`` = the model package's default)."""

    model: str = DEFAULT_MODEL
    tile: int | None = None
    overlap: float | None = None
    blend: str = "gaussian"
    chunk: int = 4096
    batch: int = 16
    device: str = "auto"
    save_scores: bool = False
    bands: Mapping[str, int] = field(default_factory=dict)
    amp: bool = True

    def check(self) -> None:
        if self.blend not in BLEND_MODES:
            raise ConfigError(f"blend must be one of {', '.join(BLEND_MODES)}, got {self.blend!r}")
        if self.chunk < 1:
            raise ConfigError(f"chunk must be >= 1 pixel, got {self.chunk}; e.g. --chunk 4096")
        if self.batch < 1:
            raise ConfigError(f"batch must be >= 1 window, got {self.batch}; e.g. --batch 16")
        if self.tile is not None and self.tile < 1:
            raise ConfigError(f"tile must be >= 1 pixel, got {self.tile}; e.g. --tile 512")
        if self.overlap is not None and not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"overlap must be >= 0 and < 1, got {self.overlap}; e.g. --overlap 0.25")


@dataclass(frozen=True)
class RunResult:
    """What a run produced and how it went."""

    outputs: dict[str, Path]
    windows_total: int
    windows_evaluated: int
    windows_skipped: int
    chunks: int
    wall_seconds: float
    megapixels: float

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.wall_seconds if self.wall_seconds > 0 else math.inf

    def summary(self) -> str:
        where = ", ".join(str(p) for p in self.outputs.values())
        return (f"wrote {where} | {self.windows_evaluated} windows evaluated ({self.windows_skipped} nodata "
                f"skipped) in {self.chunks} chunks | {self.wall_seconds:.1f} s | "
                f"{self.megapixels_per_second:.2f} MP/s")


class _Writer:
    """Writes finished chunks in a background thread, at most one chunk behind compute."""

    def __init__(self, store: MaskStore, raster: LabelRasterWriter, save_scores: bool):
        self.store, self.raster, self.save_scores = store, raster, save_scores
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segflow-write")
        self.pending: Future[None] | None = None

    def _write(self, box: Box, labels: np.ndarray, scores: np.ndarray | None) -> None:
        self.store.write(box, labels, scores)
        self.raster.write(box, labels)

    def submit(self, chunk: BlendedChunk) -> None:
        scores = None
        if self.save_scores and chunk.scores is not None:
            scores = np.where(chunk.valid, chunk.scores, np.float32(np.nan)).astype(np.float16)
        if self.pending is not None:
            self.pending.result()
        self.pending = self.pool.submit(self._write, chunk.box, chunk.labels, scores)

    def drain(self) -> None:
        try:
            if self.pending is not None:
                self.pending.result()
        finally:
            self.pool.shutdown(wait=True)


def _provenance(input_path: Path, scene_meta: dict[str, Any], package: ModelPackage, params: TileInferParams,
                grid: WindowGrid, stats: BlendStats, device: str, wall: float, started: str) -> dict[str, Any]:
    p = asdict(params)
    p["bands"] = dict(params.bands)
    return {
        "segflow_version": __version__,
        "started_utc": started,
        "wall_seconds": round(wall, 3),
        "input": {"path": str(input_path.resolve()), "size_bytes": input_path.stat().st_size, **scene_meta},
        "model": package.provenance(),
        "parameters": p,
        "effective": {"tile": list(grid.tile), "stride": list(grid.stride), "device": device},
        "windows": {"total": stats.windows_total, "evaluated": stats.windows_evaluated,
                    "skipped_nodata": stats.windows_skipped},
        "chunks_written": stats.chunks,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "platform": platform.platform()},
    }


InputPaths = str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]]


def tile_infer(input_path: InputPaths, output_dir: str | os.PathLike[str],
               params: TileInferParams | None = None, *, progress: Progress | None = None) -> RunResult:
    """Segment a raster of any size window by window and publish ``mask.zarr``, ``labels.tif``, ``run.json``.

    The scene is read lazily by chunks; windows of the model's tile size on a global grid are
    evaluated once each, blended with ``params.blend`` weights, and written chunk by chunk. All
    outputs are built in a staging folder inside ``output_dir`` and renamed into place only
    when complete. ``progress(done, total)`` is called after each chunk.

    ``input_path`` is one raster, or a mapping ``{"image": scene, "dem": dem}`` for a model that
    reads several co-registered rasters (its ``model.yaml`` names each band's ``source``).
    """
    limit_heap_fragmentation()
    with gdal_cache_limit():
        return _tile_infer(input_path, output_dir, params, progress)


def _tile_infer(input_path: InputPaths, output_dir: str | os.PathLike[str],
                params: TileInferParams | None, progress: Progress | None) -> RunResult:
    params = params or TileInferParams()
    params.check()
    t0, started = time.perf_counter(), datetime.now(UTC).isoformat(timespec="seconds")
    inputs = dict(input_path) if isinstance(input_path, Mapping) else parse_inputs([input_path])
    inputs = {k: Path(v) for k, v in inputs.items()}
    package = resolve_package(params.model)
    spec = package.spec
    scenes = {name: open_geotiff(path) for name, path in inputs.items()}
    for name, opened in scenes.items():
        if spec.spatial_dims != opened.spatial_dims:
            raise InputError(f"model {spec.name!r} is {spec.spatial_dims}D but {inputs[name]} is a "
                             f"{opened.spatial_dims}D raster; choose a {opened.spatial_dims}D model")
    scene = assemble_scene(spec, scenes, params.bands)
    input_path = inputs[spec.sources[0]]
    grid = WindowGrid.create(scene.spatial_shape, params.tile or spec.tile_shape,
                             spec.overlap if params.overlap is None else params.overlap)
    chunks = ChunkGrid.create(scene.spatial_shape, params.chunk)
    predictor = Predictor(load_module(package), spec, device=params.device, batch_size=params.batch,
                          amp=params.amp)
    stats = BlendStats()
    with Staging(output_dir) as staging:
        attrs: dict[str, Any] = {"crs": scene.crs, "transform": list(scene.transform) if scene.transform else None,
                                 "source": str(input_path), "model": spec.name}
        if scene.gcps:
            attrs.update(gcps=[list(g) for g in scene.gcps], gcp_crs=scene.gcp_crs)
        if scene.rpcs:
            attrs["rpcs"] = dict(scene.rpcs)
        store = MaskStore(staging.path / "mask.zarr", scene.spatial_shape, chunks.chunk, spec.class_names,
                          save_scores=params.save_scores, attrs=attrs)
        height, width = scene.spatial_shape
        raster = LabelRasterWriter(staging.path / "labels.tif", width=width, height=height, crs=scene.crs,
                                   transform=scene.transform, nodata=LABEL_NODATA, class_names=spec.class_names,
                                   colors=[c.color for c in spec.classes], gcps=scene.gcps,
                                   gcp_crs=scene.gcp_crs, rpcs=scene.rpcs)
        writer = _Writer(store, raster, params.save_scores)
        try:
            weights = blend_weights(grid.tile, params.blend)
            for chunk in blend_chunks(scene, grid, chunks, predictor.predict_tensor, weights, len(spec.classes),
                                      batch_size=params.batch, stats=stats, keep_scores=params.save_scores,
                                      device=predictor.device):
                writer.submit(chunk)
                del chunk
                if progress is not None:
                    progress(stats.chunks, len(chunks))
            writer.drain()
        except BaseException:
            writer.drain()
            raster.abort()
            raise
        raster.finish()
        wall = time.perf_counter() - t0
        run = _provenance(input_path, scene.meta, package, params, grid, stats, str(predictor.device), wall,
                          started)
        if len(inputs) > 1:
            run["inputs"] = {k: str(v.resolve()) for k, v in inputs.items()}
        (staging.path / "run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
        outputs = staging.publish(["mask.zarr", "labels.tif", "run.json"])
    return RunResult(outputs=outputs, windows_total=stats.windows_total, windows_evaluated=stats.windows_evaluated,
                     windows_skipped=stats.windows_skipped, chunks=stats.chunks, wall_seconds=wall,
                     megapixels=math.prod(scene.spatial_shape) / 1e6)
