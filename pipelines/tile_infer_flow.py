"""Prefect flow for tile-infer: the same library call as ``segflow run tile-infer``.

Run it locally with ``python -m pipelines.tile_infer_flow scene.tif out/`` or deploy it (the
``tile-infer`` deployment in prefect.yaml, run on demand).
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import flow, get_run_logger, task

from segflow.io.dicom import dicom_series_name
from segflow.tile_infer import Execution, TileInferParams, tile_infer


@task(name="tile-infer", retries=0)
def tile_infer_task(input_path: str, output_dir: str, params: TileInferParams,
                    execution: Execution) -> dict[str, Any]:
    result = tile_infer(input_path, output_dir, params, execution=execution)
    return {
        "outputs": {k: str(v) for k, v in result.outputs.items()},
        "windows_evaluated": result.windows_evaluated,
        "windows_skipped": result.windows_skipped,
        "chunks": result.chunks,
        "chunks_computed": result.chunks_computed,
        "chunks_reused": result.chunks_reused,
        "wall_seconds": result.wall_seconds,
        "delivered": list(result.delivered),
        "rows_delivered": result.rows_delivered,
        "summary": result.summary(),
    }


@flow(name="segflow-tile-infer", log_prints=False)
def tile_infer_flow(input_path: str, output_dir: str, model: str | None = None, tile: int | None = None,
                    overlap: float | None = None, blend: str = "gaussian", chunk: int | None = None, batch: int = 16,
                    device: str = "auto", save_scores: bool = False,
                    bands: dict[str, int] | None = None, workers: int | None = None,
                    dask_address: str | None = None, series: str | None = None,
                    pacs: str | None = None, meshes: bool = False, vectorize: str | None = None,
                    min_area: float = 0.0, simplify: float = 0.0, postgis: str | None = None,
                    panoptic: bool = False, precision: str = "auto", tta: str = "none",
                    compile: bool = False) -> dict[str, Any]:
    """Segment one scene or volume into mask.zarr, its exports and run.json under ``output_dir``.

    ``workers`` runs the chunk tasks on a local cluster of that many processes, ``dask_address``
    on a running dask cluster; a re-run after a crash continues the interrupted run. ``series``
    picks one series of a DICOM folder; ``pacs`` delivers its DICOM SEG (see ``segflow run
    tile-infer --help``); ``meshes`` adds a surface mesh per instance of a volume (``meshes/``).
    Rasters: ``vectorize`` (gpkg, parquet, fgb, geojson) writes the objects as polygons, filtered by
    ``min_area`` and simplified by ``simplify`` (map units); ``postgis`` also writes them into that table
    (the password from a Prefect Secret block, ``&secret=NAME``, or PGPASSWORD); ``panoptic`` adds panoptic.tif.
    ``precision`` (auto, fp32, bf16, fp16), ``tta`` (none, flips) and ``compile`` as the CLI's --precision,
    --tta and --compile.
    """
    from segflow.batch.settings import check_targets
    from segflow.features import VectorOptions

    check_targets(postgis, pacs)  # no password in a flow's parameters: Prefect stores and shows them
    params = TileInferParams(model=model, tile=tile, overlap=overlap, blend=blend, chunk=chunk, batch=batch,
                             device=device, save_scores=save_scores, bands=bands or {}, pacs=pacs, meshes=meshes,
                             vectorize=vectorize, vector_options=VectorOptions(min_area=min_area, simplify=simplify),
                             postgis=postgis, panoptic=panoptic, precision=precision, tta=tta,
                             compile=compile)
    source = dicom_series_name(input_path, series) if series else input_path
    result = tile_infer_task(source, output_dir, params, Execution(workers=workers, address=dask_address))
    get_run_logger().info(result["summary"])
    return result


if __name__ == "__main__":
    tile_infer_flow(sys.argv[1], sys.argv[2])
