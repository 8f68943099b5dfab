"""``segflow run tile-infer``: segment a raster of any size into mask.zarr + labels.tif (COG)."""

from __future__ import annotations

from pathlib import Path

import click

from ._errors import SegflowCommand
from .options import device_option, model_option, output_option, progress_bar, quiet_option

__all__ = ["tile_infer_cmd"]


@click.command("tile-infer", cls=SegflowCommand)
@click.option("--input", "-i", "inputs", required=True, multiple=True, metavar="[NAME=]PATH",
              help="Input raster (GeoTIFF or any GDAL raster). Models that read several co-registered "
                   "rasters take the others by name, e.g. --input scene.tif --input dem=dem.tif.")
@output_option(default=Path("out"), help="Output directory; gets mask.zarr, labels.tif and run.json.")
@model_option(help="Built-in model name or path to a model package directory "
                   "(default: spectral-landcover for rasters, ct-tissue for volumes). See `segflow models list`.")
@click.option("--tile", type=int, default=None, help="Window size in pixels (default: the model's).")
@click.option("--overlap", type=float, default=None,
              help="Fraction of a window shared with its neighbour, 0 <= overlap < 1 (default: the model's).")
@click.option("--blend", type=click.Choice(["gaussian", "cosine", "constant"]), default="gaussian",
              show_default=True, help="Weights for blending overlapping windows.")
@click.option("--chunk", type=int, default=None,
              help="Processing chunk size in pixels (voxels) per axis; bounds memory, never changes the result "
                   "(default: 2048 for rasters, 128 for volumes).")
@click.option("--batch", type=int, default=16, show_default=True, help="Windows per forward pass.")
@device_option(default="auto", help="auto, cpu, cuda or cuda:N.")
@click.option("--band", "bands", multiple=True, metavar="NAME=N",
              help="Scene band (1-based) for a model input, e.g. --band nir=8; repeatable.")
@click.option("--save-scores", is_flag=True, help="Also store blended class scores (float16) in mask.zarr.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="Numeric precision of the forward pass: auto takes the fastest one the model package declares "
                   "validated (model.yaml precisions) that the device supports, fp32 when it declares none (and on "
                   "a --dask-address cluster); bf16 on CUDA and on CPUs with native bf16 (AVX512_BF16, AMX), fp16 "
                   "on CUDA only.")
@click.option("--no-amp", is_flag=True, help="The same as --precision fp32 (kept for older scripts).")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the network (eager networks, not TorchScript or ONNX): faster forward passes "
                   "after a one-off compilation (seconds to tens of seconds); worth it for large scenes.")
@click.option("--tta", type=click.Choice(["none", "flips"]), default="none", show_default=True,
              help="Test-time augmentation: flips also runs every window mirrored over each combination of its "
                   "spatial axes (4 copies in 2D, 8 in 3D) and averages the probabilities before blending; costs "
                   "that many forward passes.")
@click.option("--workers", type=int, default=None,
              help="Run the chunk tasks on a local cluster of this many worker processes (default: threads in "
                   "this process).")
@click.option("--dask-address", default=None, metavar="ADDRESS",
              help="Run the chunk tasks on a running dask.distributed cluster, e.g. tcp://scheduler:8786.")
@click.option("--series", default=None, metavar="UID",
              help="For a folder of DICOM files holding several series: the SeriesInstanceUID to segment.")
@click.option("--pacs", default=None, metavar="TARGET",
              help="Send seg.dcm (DICOM series inputs) to a PACS and confirm it is stored: "
                   "dicomweb+http://host:8042/dicom-web or dimse://AET@host:4242.")
@click.option("--meshes", is_flag=True,
              help="Volumes: also a surface mesh per instance of the model's thing classes, in world millimetres "
                   "(RAS), as binary PLY in meshes/ with meshes/index.csv.")
@click.option("--vectorize", is_flag=True,
              help="Rasters: also every object as a polygon in the scene's CRS (things one per instance, stuff "
                   "classes as merged regions; class 0 left out; a multi-label model's every class, overlapping) in "
                   "instances.gpkg (or --vector-format).")
@click.option("--vector-format", type=click.Choice(["gpkg", "parquet", "fgb", "geojson"]), default="gpkg",
              show_default=True, help="With --vectorize: GeoPackage, GeoParquet, FlatGeobuf or GeoJSON (RFC 7946, "
                                      "WGS 84).")
@click.option("--min-area", type=float, default=0.0, show_default=True,
              help="With --vectorize: leave out objects smaller than this, in map units² (m² for a metric CRS).")
@click.option("--simplify", type=float, default=0.0, show_default=True,
              help="With --vectorize: topology-preserving simplification tolerance in map units (0: exact pixel "
                   "outlines).")
@click.option("--opening", type=int, default=0, show_default=True,
              help="Smooth the labels (every output): morphological opening of each class with a disk of this "
                   "radius in pixels, which removes specks and thin spurs.")
@click.option("--closing", type=int, default=0, show_default=True,
              help="Smooth the labels (every output): morphological closing with a disk of this radius in pixels, "
                   "which fills small gaps and notches (applied before the opening).")
@click.option("--fill-holes", type=float, default=0.0, show_default=True,
              help="With --vectorize: remove holes smaller than this from the polygons, in map units².")
@click.option("--separate", type=click.Choice(["none", "watershed"]), default="none", show_default=True,
              help="With --vectorize: split touching objects of thing classes by a watershed on the distance "
                   "transform (markers at least --min-distance pixels apart).")
@click.option("--min-distance", type=float, default=5.0, show_default=True,
              help="With --separate watershed: smallest distance in pixels between two objects' centres.")
@click.option("--postgis", default=None, metavar="URL",
              help="Rasters: also write the polygons (implies --vectorize) into a PostGIS table, replacing this "
                   "scene's rows: postgresql://user@host/db?table=objects (password from the URL, PGPASSWORD "
                   "or &secret=PREFECT_BLOCK).")
@click.option("--panoptic", is_flag=True,
              help="Rasters: also panoptic.tif, the class (band 1) and instance id (band 2, as in the vector "
                   "output) of every pixel.")
@click.option("--crf", is_flag=True,
              help="Rasters: refine the blended probabilities with a dense CRF (Gaussian spatial and bilateral "
                   "appearance kernels over the model's bands, the DeepLab post-processing) before the outputs; "
                   "keeps the scores.")
@quiet_option(help="No progress bar and no summary line.")
def tile_infer_cmd(inputs: tuple[str, ...], output_dir: Path, model: str | None, tile: int | None,
                   overlap: float | None, blend: str, chunk: int | None, batch: int, device: str,
                   bands: tuple[str, ...], save_scores: bool, precision: str, no_amp: bool, compile_: bool, tta: str,
                   workers: int | None,
                   dask_address: str | None, series: str | None, pacs: str | None, meshes: bool,
                   vectorize: bool, vector_format: str, min_area: float, simplify: float, opening: int, closing: int,
                   fill_holes: float, separate: str,
                   min_distance: float, postgis: str | None,
                   panoptic: bool, crf: bool, quiet: bool) -> None:
    """Segment a raster of any size by overlapping windows into mask.zarr + labels.tif (COG).

    Run again after a crash with the same options: only the unfinished chunks are computed.
    """
    from ..bands import parse_band_overrides, parse_inputs, with_series
    from ..crf import CRFParams
    from ..features import VectorOptions
    from ..tile_infer import Execution, TileInferParams, tile_infer

    params = TileInferParams(model=model, tile=tile, overlap=overlap, blend=blend, chunk=chunk,
                             batch=batch, device=device, save_scores=save_scores,
                             bands=parse_band_overrides(bands), amp=not no_amp, precision=precision, tta=tta,
                             compile=compile_, pacs=pacs, meshes=meshes,
                             vectorize=vector_format if vectorize else None,
                             vector_options=VectorOptions(min_area=min_area, simplify=simplify, separate=separate,
                                                          min_distance=min_distance, fill_holes=fill_holes),
                             postgis=postgis, opening=opening, closing=closing,
                             panoptic=panoptic, crf=CRFParams() if crf else None)
    execution = Execution(workers=workers, address=dask_address)
    with progress_bar(not quiet, "chunk") as progress:
        result = tile_infer(with_series(parse_inputs(inputs), series), output_dir, params, progress=progress,
                            execution=execution)
    if not quiet:
        click.echo(result.summary())
