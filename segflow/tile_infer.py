"""tile-infer: a raster of any size → overlapping-window inference → zarr mask → COG.

This is the library call behind ``segflow run tile-infer`` and the Prefect flow.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._failpoints import failpoint
from ._memory import limit_heap_fragmentation
from .bands import assemble_scene, parse_inputs
from .crf_pass import crf_fingerprint
from .detect import check_run as check_detector_run
from .devices import check_window_memory, resolve_device
from .engine import Execution, PredictorFactory, RunSpec, input_identity, make_plan, run_fingerprint, run_plan
from .engine.spill import SPILL_FOLDER, spill_bytes
from .engine.spill import clear as clear_spill
from .errors import ConfigError, InputError
from .io.atomic import atomic_write_text
from .io.deliver import DICOM_SEG, VectorFile, deliver_run
from .io.gdal_names import input_name, shown_name
from .io.geotiff import close_datasets, gdal_cache_limit
from .io.lock import OutputLock
from .io.mask_store import MaskStore
from .io.pacs import PacsTarget, parse_pacs
from .io.publish import STAGING_PREFIX, Staging, prepare_output, recover
from .io.readback import verify_store
from .io.readers import open_scene
from .io.sinks import Sink, sinks_for, write_sinks
from .io.space import check_space, estimate_bytes, guard_writes, tree_bytes
from .models import ModelPackage, resolve_package
from .models.expects import check_expected_input
from .multilabel import check_run as check_multilabel_run
from .precision import precision_for
from .provenance import provenance
from .resample import GridMap, model_grid, model_scene, to_input_grid
from .run_params import RunResult, TileInferParams
from .run_store import exports_digest, published_store, reuse_or_create, up_to_date
from .scene import Scene
from .tiling import ChunkGrid, WindowGrid, effective_tile, warn_if_oversampled

__all__ = ["DEFAULT_MODEL", "DEFAULT_MODELS", "Execution", "RunResult", "TileInferParams", "tile_infer"]

DEFAULT_MODEL = "spectral-landcover"
DEFAULT_MODELS = {2: DEFAULT_MODEL, 3: "ct-tissue"}  # by the input's spatial dimensions
# processing chunk per axis: 2048² pixels or 128³ voxels hold the blend of a chunk (K float32 sums) in
# ~100 MB-1 GB for typical class counts, so memory stays bounded whatever the scene or volume size
DEFAULT_CHUNK = {2: 2048, 3: 128}
MODEL_GRID_STORE = "model-grid.zarr"  # in the staging folder only: the engine's store when the model has its own grid
Progress = Callable[[int, int], None]


InputPaths = str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]]


def tile_infer(input_path: InputPaths, output_dir: str | os.PathLike[str],
               params: TileInferParams | None = None, *, progress: Progress | None = None,
               execution: Execution | None = None) -> RunResult:
    """Segment a raster of any size window by window and publish ``mask.zarr``, ``labels.tif``, ``run.json``.

    The scene is planned as chunk tasks (:mod:`segflow.engine`): windows of the model's tile
    size on a global grid are evaluated once each, blended with ``params.blend`` weights, and
    each finished chunk lands in ``mask.zarr`` with a completion record. ``execution`` says
    where the tasks run (threads here by default, a local cluster of worker processes, or a
    running dask cluster). Outputs are built in a staging folder inside ``output_dir`` and
    renamed into place only when complete. A run killed part-way is continued by the same call
    into the same output: only chunks without a completion record are computed. One run at a
    time per output folder. ``progress(done, total)`` is called after each chunk.

    ``input_path`` is one raster, or a mapping ``{"image": scene, "dem": dem}`` for a model that
    reads several co-registered rasters (its ``model.yaml`` names each band's ``source``).
    """
    limit_heap_fragmentation()
    with gdal_cache_limit():
        return _tile_infer(input_path, output_dir, params or TileInferParams(), progress,
                           execution or Execution())


def _pixel_parameters(params: TileInferParams, grid: WindowGrid, chunks: ChunkGrid, bands: tuple[str, ...],
                      device: str, precision: str) -> dict[str, Any]:
    """Every parameter that changes the pixels or the layout of the store.

    The device is the one asked for (``auto`` stays ``auto``), so the same command continues
    its run whichever scheduler or machine resolves it; the precision is the resolved one.
    """
    return {"tile": grid.tile, "stride": grid.stride, "blend": params.blend, "chunk": chunks.chunk,
            "bands": dict(params.bands), "band_names": bands, "save_scores": params.save_scores,
            "device": device, "precision": precision, "tta": params.tta, "compile": params.compile,
            "crf": crf_fingerprint(params.crf),
            "smooth": [params.closing, params.opening]}


@dataclass(frozen=True)
class _Job:
    """A run prepared and checked: everything decided before the output folder is touched."""

    params: TileInferParams
    execution: Execution
    package: ModelPackage
    inputs: dict[str, str]  # local paths or GDAL dataset names, as given
    input_path: str
    scene: Scene  # as read, on the input's grid: the outputs' grid
    grid: WindowGrid
    chunks: ChunkGrid  # of the engine's grid (the model grid when the model declares one)
    work: Scene  # what the model sees: ``scene``, or ``scene`` on the model's spacing and orientation
    grid_map: GridMap | None
    out_chunks: ChunkGrid  # of the outputs' grid
    factory: PredictorFactory
    device: str  # resolved here; as asked when a remote cluster resolves it
    precision: str  # resolved here (segflow.precision); on a remote cluster auto is fp32
    fingerprint: str
    sinks: Sequence[Sink]
    needed_bytes: int  # roughly what the run writes into its output folder at its peak
    pacs: PacsTarget | None
    postgis: Any  # PostgisTarget | None (segflow.io.postgis, imported only when asked for)
    started: str
    t0: float

    @property
    def names(self) -> list[str]:
        return ["mask.zarr", *(e for s in self.sinks for e in s.entries), "run.json"]


def _store(path: Path, job: _Job, published: Path | None) -> tuple[MaskStore, bool]:
    """The run's store on the input's grid (an earlier attempt's, the published one's copy, or a new one), and
    whether its masks are final (only the exports remain)."""
    spec = job.package.spec
    attrs = {**job.scene.geometry.attrs(), "source": str(job.input_path), "model": spec.name,
             "run_fingerprint": job.fingerprint}
    return reuse_or_create(path, job.fingerprint, lambda: MaskStore.create(
        path, job.scene.spatial_shape, job.out_chunks.chunk, spec.class_names,
        save_scores=job.params.save_scores, attrs=attrs, thresholds=spec.thresholds), published)


def _work_store(path: Path, job: _Job) -> MaskStore:
    """The store on the model grid, with scores, that the input grid's labels are made from."""
    attrs = {**job.work.geometry.attrs(), "run_fingerprint": job.fingerprint}
    return reuse_or_create(path, job.fingerprint, lambda: MaskStore.create(
        path, job.work.spatial_shape, job.chunks.chunk, job.package.spec.class_names, save_scores=True,
        attrs=attrs, thresholds=job.package.spec.thresholds))[0]


def _prepare(input_path: InputPaths, params: TileInferParams, execution: Execution) -> _Job:
    params.check()
    if params.crf is not None:  # the CRF refines the blended probabilities: the store keeps them
        params = replace(params, save_scores=True)
    execution.check()
    t0, started = time.perf_counter(), datetime.now(UTC).isoformat(timespec="seconds")
    inputs = dict(input_path) if isinstance(input_path, Mapping) else parse_inputs([input_path])
    inputs = {k: input_name(v) for k, v in inputs.items()}
    scenes = {name: open_scene(path) for name, path in inputs.items()}
    package = resolve_package(params.model or DEFAULT_MODELS[next(iter(scenes.values())).spatial_dims])
    spec = package.spec
    for name, opened in scenes.items():
        if spec.spatial_dims != opened.spatial_dims:
            raise InputError(f"model {spec.name!r} is {spec.spatial_dims}D but {inputs[name]} is a "
                             f"{opened.spatial_dims}D raster; choose a {opened.spatial_dims}D model")
    scene = assemble_scene(spec, scenes, params.bands)
    check_expected_input(spec, scene)  # e.g. an MR volume given to a CT model: refused, asking for --model
    check_multilabel_run(spec, params)  # options that need one class per pixel, for a model whose classes overlap
    check_detector_run(spec, params, execution.distributed)  # options that need blended probabilities
    if params.crf is not None and scene.spatial_dims != 2:
        raise ConfigError("--crf refines 2D rasters; leave it out for volumes")
    for name in ("opening", "closing"):
        if not isinstance(getattr(params, name), int) or not 0 <= getattr(params, name) <= 64:
            raise ConfigError(f"--{name} is a radius in pixels from 0 to 64, got {getattr(params, name)!r}")
    grid_map = None if scene.volume is None else model_grid(scene.volume, scene.spatial_shape, spec.spacing,
                                                               spec.orientation)
    work = scene if grid_map is None else model_scene(scene, grid_map)  # what the model sees
    overlap = spec.overlap if params.overlap is None else params.overlap
    tile = (params.tile,) * spec.spatial_dims if params.tile else spec.tile_shape
    grid = WindowGrid.create(work.spatial_shape, effective_tile(tile, work.spatial_shape, fixed=spec.fixed_tile),
                             overlap)
    warn_if_oversampled(grid, overlap)
    chunk = params.chunk or DEFAULT_CHUNK[scene.spatial_dims]
    chunks = ChunkGrid.create(work.spatial_shape, chunk)
    # refuse a missing CUDA device and a window batch that cannot fit before anything is locked or written
    device = params.device if execution.address else str(resolve_device(params.device))
    if not execution.address:
        check_window_memory(grid.tile, scene.num_bands, len(spec.classes), min(params.batch, len(grid)),
                            resolve_device(device))
    threads = max(1, (os.cpu_count() or 1) // execution.workers) if execution.workers else None
    precision = precision_for(params.asked_precision, None if execution.address else resolve_device(device), spec)
    identities = {k: input_identity(v) for k, v in inputs.items()}
    model_id = {"weights_sha256": package.weights_sha256, "model_yaml_sha256": package.yaml_sha256}
    fingerprint = run_fingerprint(identities, model_id, {**_pixel_parameters(  # scale/offset may sit in a sidecar
        params, grid, chunks, scene.band_names, params.device.strip().lower(), precision),
        "values": scene.meta.get("values"),
        "source_files": scene.meta.get("identity")})  # a folder's files (a DICOM series) as they are now
    postgis, vectors = _vector_outputs(params, scene, spec, inputs[spec.sources[0]])
    sinks = sinks_for(scene, spec, meshes=params.meshes, vectors=vectors, panoptic=params.panoptic)
    return _Job(params=params, execution=execution, package=package, inputs=inputs,
                input_path=inputs[spec.sources[0]], scene=scene, grid=grid, chunks=chunks, work=work,
                grid_map=grid_map,
                out_chunks=chunks if grid_map is None else ChunkGrid.create(scene.spatial_shape, chunk),
                factory=PredictorFactory(package, params.device, params.batch, precision, params.tta, threads,
                                         params.compile),
                device=device, precision=precision,
                fingerprint=fingerprint, sinks=sinks,
                needed_bytes=estimate_bytes(scene.spatial_shape, len(spec.classes), params.save_scores,
                                            label_planes=len(spec.classes) if spec.multilabel else 1)
                + (0 if execution.distributed else spill_bytes(grid, chunks, len(spec.classes))),
                pacs=_pacs_target(params.pacs, sinks, inputs[spec.sources[0]]), postgis=postgis,
                started=started, t0=t0)


def _vector_outputs(params: TileInferParams, scene: Scene, spec: Any, source: str) -> tuple[Any, Sink | None]:
    """The PostGIS target and the vector sink a run asks for (imported only then: pyarrow, psycopg)."""
    if params.vectorize is None and params.postgis is None:
        return None, None
    from .io.postgis import PostgisTarget
    from .io.vector_sink import VectorSink, scene_id_of

    if params.panoptic and params.vector_options.separate != "none":
        raise ConfigError("--panoptic numbers connected regions, so its ids would not be the split instances of "
                          f"--separate {params.vector_options.separate}; run them separately")
    postgis = None if params.postgis is None else PostgisTarget.parse(params.postgis)
    scene_id = params.scene_id or scene_id_of(source)
    return postgis, VectorSink.for_scene(scene, spec, scene_id, params.vectorize or "gpkg", params.vector_options)


def _vector_file(job: _Job) -> VectorFile | None:
    from .io.vector_sink import VectorSink

    vectors = next((s for s in job.sinks if isinstance(s, VectorSink)), None)
    return None if vectors is None else VectorFile(vectors.name, vectors.fmt, vectors.scene_id)


def _pacs_target(pacs: str | None, sinks: Sequence[Sink], source: str) -> PacsTarget | None:
    if pacs is None:
        return None
    target = parse_pacs(pacs)
    if not any(DICOM_SEG in s.entries for s in sinks):
        raise ConfigError(f"--pacs sends the DICOM SEG ({DICOM_SEG}), which is made only for a DICOM series input; "
                          f"{shown_name(source)} is not one")
    return target


def _tile_infer(input_path: InputPaths, output_dir: str | os.PathLike[str], params: TileInferParams,
                progress: Progress | None, execution: Execution) -> RunResult:
    job = _prepare(input_path, params, execution)
    output = Path(output_dir)
    prepare_output(output)
    with guard_writes(output, job.needed_bytes), OutputLock(output):
        folder = f"run-{job.fingerprint[:16]}"
        recover(output, keep=(STAGING_PREFIX + folder,))
        done_before = up_to_date(output, job.fingerprint, exports_digest(job.params), job.names)
        if done_before is not None:  # nothing to write: no space needed
            result = _result_from(done_before, output, job.names, time.perf_counter() - job.t0, job.scene)
        else:
            # what an earlier attempt already staged counts toward the estimate
            check_space(output, job.needed_bytes - tree_bytes(output / (STAGING_PREFIX + folder)))
            with Staging(output, folder, keep_on_error=True) as staging:
                published = published_store(output, job.fingerprint, len(job.out_chunks))
                store, final = _store(staging.path / "mask.zarr", job, published)
                try:
                    result = _compute(job, store, staging, progress, final)
                except BaseException:
                    if not store.done():  # nothing worth resuming
                        staging.discard()
                    raise
        if params.deliver:  # the outputs are published: a failed delivery loses nothing
            sent = deliver_run(output, pacs=job.pacs, postgis=job.postgis, vectors=_vector_file(job))
            result = replace(result, delivered=sent.instances, rows_delivered=sent.rows)
        return result


@dataclass(frozen=True)
class _Masks:
    """How the masks of a run came about: windows evaluated and skipped, chunks computed and reused."""

    evaluated: int
    skipped: int
    computed: int
    reused: int
    scheduler: Any


@dataclass
class _Counter:
    """Counts finished chunks for ``progress`` (and passes the ``chunk`` failpoint of the tests)."""

    progress: Progress | None
    total: int
    finished: int = 0

    def step(self, record: dict[str, Any] | None = None) -> None:
        self.finished += 1
        if self.progress is not None:
            self.progress(self.finished, self.total)
        failpoint("chunk")


def _masks(job: _Job, store: MaskStore, staging: Staging, progress: Progress | None) -> _Masks:
    """Compute the chunks of ``store`` that have no completion record, then the passes over the whole store."""
    grid, chunks, params = job.grid, job.chunks, job.params
    if job.package.spec.instances:  # an instance model: every window, then the merged instances
        return _detected(job, store, progress)
    engine_store = store if job.grid_map is None else _work_store(staging.path / MODEL_GRID_STORE, job)
    reused = set(engine_store.done())
    plan = make_plan(grid, chunks, reused)
    parts = None if job.execution.distributed else staging.path / SPILL_FOLDER
    run = RunSpec(grid=grid, chunks=chunks, blend=params.blend, num_classes=len(job.package.spec.classes),
                  factory=job.factory, store=engine_store.path, fingerprint=job.fingerprint,
                  save_scores=params.save_scores or job.grid_map is not None, to_host=job.execution.distributed,
                  spill=parts, thresholds=job.package.spec.thresholds)
    counter = _Counter(progress, len(chunks) + (0 if job.grid_map is None else len(job.out_chunks)), len(reused))
    on_chunk = counter.step

    try:
        if parts is not None:
            clear_spill(parts)  # left by an interrupted run: those parts are recomputed
        outcome = run_plan(plan, job.work, run, job.execution, on_chunk=on_chunk,
                           cuda=job.device.startswith("cuda"))
        if job.grid_map is not None:  # the model grid's scores back onto the input grid
            counter.finished += len(store.done())
            to_input_grid(job.grid_map, engine_store, store, job.scene, job.out_chunks,
                          save_scores=params.save_scores, on_chunk=on_chunk, thresholds=job.package.spec.thresholds)
    finally:
        close_datasets()  # the input's cached blocks are not needed by the sinks
        if parts is not None:
            clear_spill(parts)
    missing = len(chunks) - len(engine_store.done()) + len(job.out_chunks) - len(store.done())
    evaluated = len(outcome.evaluated)
    if missing or evaluated != len(set(outcome.evaluated)) or evaluated + outcome.skipped != plan.windows_to_evaluate:
        raise RuntimeError(f"engine error: {missing} chunks without a completion record, {evaluated} windows "
                           f"evaluated ({len(set(outcome.evaluated))} distinct) of {plan.windows_to_evaluate} planned")
    if params.crf is not None:
        from .crf_pass import refine_store

        refine_store(job.scene, store, params.crf, job.device)
    if params.opening or params.closing:
        from .smooth_pass import smooth_store

        smooth_store(store, len(job.package.spec.classes), opening=params.opening, closing=params.closing)
    return _Masks(evaluated, outcome.skipped, len(plan.merged), len(reused), outcome.workers)


def _detected(job: _Job, store: MaskStore, progress: Progress | None) -> _Masks:
    from .detect import detect_store, detector_for

    total = len(job.out_chunks)
    try:
        detector = detector_for(job.package, device=job.device, batch=job.params.batch, precision=job.precision)
        found = detect_store(job.work, store, job.grid, detector, on_chunk=_Counter(progress, total).step)
    finally:
        close_datasets()
    if found.evaluated + found.skipped != len(job.grid) or len(store.done()) != total:
        raise RuntimeError(f"engine error: {found.evaluated} + {found.skipped} windows of {len(job.grid)}, "
                           f"{len(store.done())} chunks recorded of {total}")
    return _Masks(found.evaluated, found.skipped, total, 0, "in process (instance model)")


def _compute(job: _Job, store: MaskStore, staging: Staging, progress: Progress | None, final: bool) -> RunResult:
    """The masks (unless ``final``: copied from the published run, only the exports change), the exports, run.json."""
    grid, params = job.grid, job.params
    masks = _Masks(0, 0, 0, len(job.out_chunks), "published masks reused") if final else _masks(
        job, store, staging, progress)
    verify_store(store)
    write_sinks(job.sinks, store, staging.path, needed=job.needed_bytes)
    record = provenance(job.input_path, job.scene.meta, job.package, params, grid, job.device, job.started)
    record["effective"].update(precision=job.precision, tta=params.tta, compile=params.compile)
    if job.grid_map is not None:
        record["effective"]["model_grid"] = {"shape": list(job.grid_map.shape),
                                             "spacing": list(job.grid_map.geometry.spacing),
                                             "orientation": job.package.spec.orientation}
    wall = time.perf_counter() - job.t0
    record.update({
        "wall_seconds": round(wall, 3),
        "windows": {"total": len(grid), "evaluated": masks.evaluated, "skipped_nodata": masks.skipped,
                    "each_evaluated_once": True},
        "chunks_written": len(job.out_chunks),
        "run": {"fingerprint": job.fingerprint, "exports": exports_digest(params), "chunks_computed": masks.computed,
                "chunks_reused": masks.reused, "scheduler": masks.scheduler},
    })
    if len(job.inputs) > 1:
        record["inputs"] = {k: shown_name(v) for k, v in job.inputs.items()}
    atomic_write_text(staging.path / "run.json", json.dumps(record, indent=2) + "\n")
    outputs = staging.publish(job.names)
    return RunResult(outputs=outputs, windows_total=len(grid), windows_evaluated=masks.evaluated,
                     windows_skipped=masks.skipped, chunks=len(job.out_chunks), wall_seconds=wall,
                     megapixels=math.prod(job.scene.spatial_shape) / 1e6, chunks_computed=masks.computed,
                     chunks_reused=masks.reused, reexported=final)


def _result_from(record: dict[str, Any], output: Path, names: list[str], wall: float, scene: Scene) -> RunResult:
    windows = record.get("windows", {})
    return RunResult(outputs={n: output / n for n in names}, windows_total=int(windows.get("total", 0)),
                     windows_evaluated=0, windows_skipped=0, chunks=int(record.get("chunks_written", 0)),
                     wall_seconds=wall, megapixels=math.prod(scene.spatial_shape) / 1e6, chunks_computed=0,
                     chunks_reused=int(record.get("chunks_written", 0)))
