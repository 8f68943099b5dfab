"""Score a predicted label raster against a truth label raster, block by block.

``evaluate`` reads both rasters in ``block x block`` windows (never whole), so memory stays
bounded for rasters larger than memory, and accumulates one
:class:`~segflow.metrics.ConfusionMatrix`. Pixels that are 255 (segflow's label nodata) or the
raster's declared nodata in either input are skipped, as are truth values listed in ``ignore``.

The prediction may be a tile-infer output directory (its ``labels.tif``), a label GeoTIFF or a
``mask.zarr`` group (its ``labels`` array; geometry from the group attributes ``crs`` and
``transform``). Both rasters must share one grid: CRS, shape ``(rows, cols)`` and affine
transform. :func:`evaluate_prediction` (behind ``segflow eval``) sends a volume prediction (a 3D
``mask.zarr``, a volume run folder, a label NIfTI) to :func:`segflow.volume_eval.evaluate_volume`
(Dice, HD95 and surface Dice in mm) and a raster to :func:`evaluate`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioError
from rasterio.transform import Affine
from rasterio.windows import Window

from . import georef
from .errors import ConfigError, InputError
from .georef import PixelGrid
from .io.atomic import atomic_write_text
from .io.mask_store import MaskStore
from .labels import LABEL_NODATA
from .metrics import ConfusionMatrix

if TYPE_CHECKING:
    from .object_eval import ObjectEvalReport
    from .volume_eval import VolumeEvalReport

__all__ = ["ClassScore", "EvalReport", "LabelRaster", "evaluate", "evaluate_prediction", "open_labels"]

NODATA = LABEL_NODATA
_MAX_LABELS = 255  # labels are 0..254; 255 is nodata


# --------------------------------------------------------------------------- label sources


@dataclass
class LabelRaster:
    """A 2D label raster read by windows: a GeoTIFF band or a zarr ``labels`` array.

    ``shape`` is ``(rows, cols)``; ``crs`` / ``transform`` are None when the source has none;
    ``class_names`` come from the source's metadata (``class_names`` tag or attribute, or a
    ``classes`` tag) when present.
    """

    path: Path
    shape: tuple[int, int]
    crs: CRS | None
    transform: Affine | None
    class_names: list[str] | None
    nodata: int | None
    reader: Any = field(repr=False)
    kind: str = "geotiff"

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Labels of the window ``rows = (r0, r1)``, ``cols = (c0, c1)`` as int32 ``(r1 - r0, c1 - c0)``.

        Declared nodata becomes 255; values outside 0..255 raise :class:`InputError`.
        """
        (r0, r1), (c0, c1) = rows, cols
        try:
            if self.kind == "zarr":
                block = np.asarray(self.reader[r0:r1, c0:c1])
            else:
                block = self.reader.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
        except (RasterioError, OSError, ValueError) as exc:
            raise InputError(
                f"cannot read rows {r0}:{r1} cols {c0}:{c1} of {self.path}: the file is truncated or corrupt "
                f"({str(exc).strip()[:200]}); re-create it"
            ) from None
        labels = block.astype(np.int32, copy=False)
        if self.nodata is not None and self.nodata != NODATA:
            labels = np.where(block == self.nodata, NODATA, labels)
        if labels.size and (labels.min() < 0 or labels.max() > NODATA):
            bad = int(labels[(labels < 0) | (labels > NODATA)][0])
            raise InputError(
                f"{self.path} holds label {bad} (rows {r0}:{r1}, cols {c0}:{c1}); expected class labels 0..254 "
                "with 255 as nodata; remap the classes to that range"
            )
        return labels

    def close(self) -> None:
        if self.kind == "geotiff":
            self.reader.close()


def _split_names(value: object) -> list[str] | None:
    if isinstance(value, str):
        names = [n.strip() for n in value.split(",")]
        return names if any(names) else None
    if isinstance(value, list | tuple) and value:
        return [str(n) for n in value]
    return None


def _int_nodata(path: Path, value: object) -> int | None:
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    if math.isnan(number) or number != int(number):
        raise InputError(f"{path} declares nodata {value!r}; expected an integer label value such as 255")
    return int(number)


def _open_geotiff(path: Path) -> LabelRaster:
    try:
        ds = rasterio.open(path)
    except RasterioError as exc:
        raise InputError(
            f"cannot open {path} as a raster ({str(exc).strip()[:200]}); give a label GeoTIFF, a tile-infer "
            "output folder or a mask.zarr"
        ) from None
    try:
        if ds.count != 1:
            raise InputError(f"{path} has {ds.count} bands; expected a single-band label raster")
        if not np.issubdtype(np.dtype(ds.dtypes[0]), np.integer):
            raise InputError(
                f"{path} holds {ds.dtypes[0]} values; expected integer class labels (uint8), not scores"
            )
        tags = ds.tags()
        names = _split_names(tags.get("class_names")) or _split_names(tags.get("classes"))
        georef = ds.crs is not None or not ds.transform.is_identity
        return LabelRaster(path=path, shape=(ds.height, ds.width), crs=ds.crs,
                           transform=ds.transform if georef else None, class_names=names,
                           nodata=_int_nodata(path, ds.nodata), reader=ds)
    except BaseException:
        ds.close()
        raise


def _open_zarr(path: Path) -> LabelRaster:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises many types for unreadable stores
        raise InputError(f"cannot open {path} as a zarr group ({str(exc).strip()[:200]})") from None
    if isinstance(node, zarr.Group):
        if "labels" not in node:
            raise InputError(f"zarr group {path} has no 'labels' array; give the mask.zarr written by tile-infer")
        store = MaskStore.open(path)
        array, attrs = store.labels, store.attrs
    else:
        array, attrs = node, dict(node.attrs)
    if not isinstance(array, zarr.Array) or array.ndim != 2:
        raise InputError(f"{path}: labels must be a 2D (rows, cols) array, got shape {getattr(array, 'shape', '?')}")
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{path}: labels hold {array.dtype} values; expected integer class labels (uint8)")
    crs = None
    if attrs.get("crs"):
        try:
            crs = CRS.from_user_input(attrs["crs"])
        except CRSError:
            raise InputError(f"{path} has an unreadable crs attribute {str(attrs['crs'])[:60]!r}") from None
    raw_transform: Any = attrs.get("transform")
    transform = Affine(*raw_transform[:6]) if raw_transform else None
    return LabelRaster(path=path, shape=(int(array.shape[0]), int(array.shape[1])), crs=crs, transform=transform,
                       class_names=_split_names(attrs.get("class_names")),
                       nodata=_int_nodata(path, attrs.get("nodata")), reader=array, kind="zarr")


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and (path.suffix == ".zarr" or (path / "zarr.json").is_file()
                              or (path / ".zgroup").is_file() or (path / ".zarray").is_file())


def open_labels(path: str | os.PathLike[str], what: str = "prediction") -> LabelRaster:
    """Open a label GeoTIFF, a ``mask.zarr`` group or a tile-infer output directory.

    Parameters
    ----------
    path : str or PathLike
        The raster. For a directory that is not a zarr store, its ``labels.tif`` (else its
        ``mask.zarr``) is used.
    what : str
        ``"prediction"`` or ``"truth"``, for error messages.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p} does not exist; give a label GeoTIFF, a tile-infer output folder or a mask.zarr")
    if _is_zarr(p):
        return _open_zarr(p)
    if p.is_dir():
        if (p / "labels.tif").is_file():
            return _open_geotiff(p / "labels.tif")
        if _is_zarr(p / "mask.zarr"):
            return _open_zarr(p / "mask.zarr")
        raise InputError(f"{what} folder {p} has no labels.tif or mask.zarr; give a tile-infer output folder")
    return _open_geotiff(p)


# --------------------------------------------------------------------------- grid check


def check_same_grid(pred: LabelRaster, truth: LabelRaster) -> None:
    """Refuse with one :class:`InputError` line naming every grid property that differs."""
    georef.check_same_grid(PixelGrid(pred.shape, pred.crs, pred.transform),
                           PixelGrid(truth.shape, truth.crs, truth.transform),
                           names=("prediction", "truth"), paths=(pred.path, truth.path))


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class ClassScore:
    """Scores of one class; ratios are NaN where undefined (class absent from truth and prediction)."""

    name: str
    iou: float
    dice: float
    precision: float
    recall: float
    support: int

    def as_dict(self) -> dict[str, Any]:
        return {"class": self.name, "iou": self.iou, "dice": self.dice, "precision": self.precision,
                "recall": self.recall, "support": self.support}


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def _write_text(path: Path, text: str) -> Path:
    return atomic_write_text(path, text, hint="choose a writable location")


@dataclass(frozen=True)
class EvalReport:
    """Per-class scores and summary of one evaluation.

    ``rows`` has one :class:`ClassScore` per class in label order; ``confusion`` is the
    ``(K, K)`` matrix with rows = truth, columns = prediction; ``pixels`` the counted pixels.
    """

    rows: list[ClassScore]
    mean_iou: float
    pixel_accuracy: float
    pixels: int
    confusion: list[list[int]]
    pred: str
    truth: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "prediction": self.pred, "truth": self.truth, "pixels": self.pixels,
            "mean_iou": _json_number(self.mean_iou), "pixel_accuracy": _json_number(self.pixel_accuracy),
            "classes": [{k: _json_number(v) for k, v in r.as_dict().items()} for r in self.rows],
            "confusion_matrix": self.confusion,
        }

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON (NaN as null); returns the path."""
        return _write_text(Path(path), json.dumps(self.as_dict(), indent=2) + "\n")

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write one row per class: ``class,iou,dice,precision,recall,support`` (NaN as empty)."""
        lines: list[list[Any]] = [["class", "iou", "dice", "precision", "recall", "support"]]
        for r in self.rows:
            lines.append([r.name, *("" if math.isnan(v) else repr(v) for v in
                                    (r.iou, r.dice, r.precision, r.recall)), r.support])
        buffer = StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(lines)
        return _write_text(Path(path), buffer.getvalue())

    def format_table(self) -> str:
        """An aligned text table of the per-class scores, then mean IoU and pixel accuracy."""
        header = ["class", "IoU", "Dice", "precision", "recall", "support"]
        body = [[r.name, _fmt(r.iou), _fmt(r.dice), _fmt(r.precision), _fmt(r.recall), str(r.support)]
                for r in self.rows]
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

        def line(cells: Sequence[str]) -> str:
            return "  ".join([cells[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells[1:], widths[1:],
                                                                                      strict=True))])

        rule = "-" * len(line(header))
        out = [line(header), rule, *(line(b) for b in body), rule]
        out.append(f"mean IoU {_fmt(self.mean_iou)}   pixel accuracy {_fmt(self.pixel_accuracy)}   "
                   f"pixels {self.pixels}")
        return "\n".join(out)


# --------------------------------------------------------------------------- evaluation


def _windows(shape: tuple[int, int], block: int) -> Iterator[tuple[tuple[int, int], tuple[int, int]]]:
    rows, cols = shape
    for r0 in range(0, rows, block):
        for c0 in range(0, cols, block):
            yield (r0, min(rows, r0 + block)), (c0, min(cols, c0 + block))


def _names(k: int, explicit: Sequence[str] | None, pred: LabelRaster, truth: LabelRaster) -> list[str]:
    sources = [list(explicit) if explicit is not None else None, pred.class_names, truth.class_names]
    names = []
    for i in range(k):
        found = next((s[i] for s in sources if s is not None and i < len(s) and s[i]), f"class_{i}")
        names.append(found)
    return names


def _check_ignore(ignore: Sequence[int]) -> list[int]:
    values = []
    for v in ignore:
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= v <= NODATA:
            raise ConfigError(f"ignore value {v!r} is not a label; expected an integer in 0..255, e.g. --ignore 0")
        values.append(int(v))
    return values


def evaluate(pred: str | os.PathLike[str], truth: str | os.PathLike[str], *,
             class_names: Sequence[str] | None = None, block: int = 2048, ignore: Sequence[int] = ()) -> EvalReport:
    """Per-class IoU, Dice, precision, recall and support of ``pred`` against ``truth``.

    Parameters
    ----------
    pred : str or PathLike
        A tile-infer output folder (its ``labels.tif``), a label GeoTIFF or a ``mask.zarr``.
    truth : str or PathLike
        A label raster (GeoTIFF, or a zarr store) on the same grid as ``pred``.
    class_names : sequence of str, optional
        Names by label value; default: the prediction's ``class_names`` tag / attribute, else the
        truth's ``classes`` tag, else ``class_<i>``.
    block : int
        Window side in pixels; both rasters are read ``block x block`` at a time, so memory is
        bounded by a few ``block**2`` int32 arrays. The result does not depend on it.
    ignore : sequence of int
        Truth values to skip besides 255 / declared nodata (e.g. an "unlabelled" class).

    Returns
    -------
    EvalReport
        ``K = max(len(names), highest label seen + 1)`` classes.
    """
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ConfigError(f"block={block!r}; expected a positive number of pixels, e.g. 2048")
    ignored = _check_ignore(ignore)
    cm = ConfusionMatrix(_MAX_LABELS, ignore_index=NODATA)
    with ExitStack() as stack:
        p = open_labels(pred, "prediction")
        stack.callback(p.close)
        t = open_labels(truth, "truth")
        stack.callback(t.close)
        check_same_grid(p, t)
        for rows, cols in _windows(p.shape, block):
            pb, tb = p.read(rows, cols), t.read(rows, cols)
            if ignored:
                skip = np.isin(tb, ignored)
                pb[skip] = NODATA
                tb[skip] = NODATA
            cm.update(pb, tb)
        counts = cm.matrix
        seen = np.flatnonzero(counts.sum(axis=0) + counts.sum(axis=1))
        named = max(len(class_names) if class_names is not None else 0, len(p.class_names or []),
                    0 if p.class_names else len(t.class_names or []))
        k = max(named, int(seen[-1]) + 1 if seen.size else 0, 1)
        names = _names(k, class_names, p, t)
    iou, dice, precision, recall, support = cm.iou(), cm.dice(), cm.precision(), cm.recall(), cm.support()
    scores = [ClassScore(name=names[i], iou=float(iou[i]), dice=float(dice[i]), precision=float(precision[i]),
                         recall=float(recall[i]), support=int(support[i])) for i in range(k)]
    return EvalReport(rows=scores, mean_iou=cm.mean_iou(), pixel_accuracy=cm.pixel_accuracy(), pixels=cm.total,
                      confusion=counts[:k, :k].tolist(), pred=str(p.path), truth=str(t.path))


def evaluate_prediction(pred: str | os.PathLike[str], truth: str | os.PathLike[str], *,
                        class_names: Sequence[str] | None = None, block: int | None = None,
                        ignore: Sequence[int] = (), tolerance: float | None = None, halo: float | None = None,
                        iou: float | None = None, truth_class: str | None = None
                        ) -> EvalReport | VolumeEvalReport | ObjectEvalReport:
    """Score ``pred`` against ``truth``: a volume prediction (3D) by
    :func:`~segflow.volume_eval.evaluate_volume` (``block`` = chunk side in voxels, default 128;
    ``tolerance``/``halo`` in mm), a raster against a truth vector file (by suffix, see
    :func:`~segflow.object_eval.is_vector_file`) by :func:`~segflow.object_eval.evaluate_objects`
    (``iou`` threshold, default 0.5; ``truth_class``; ``block`` default 1024), a raster against a
    raster by :func:`evaluate` (``block`` default 2048). Options of another kind of evaluation are
    refused."""
    from .object_eval import evaluate_objects, is_vector_file
    from .volume_eval import evaluate_volume, is_label_volume

    if isinstance(block, bool) or (block is not None and (not isinstance(block, int) or block < 1)):
        raise ConfigError(f"block={block!r}; expected a positive number of pixels or voxels, e.g. 2048 or 128")
    if is_vector_file(truth):
        if is_label_volume(pred):
            raise ConfigError(f"{pred} is a volume; a vector truth ({truth}) scores 2D raster predictions")
        if tolerance is not None or halo is not None or ignore:
            raise ConfigError(f"--tolerance, --halo and --ignore do not apply to a vector truth ({truth}); leave "
                              "them out")
        return evaluate_objects(pred, truth, iou=0.5 if iou is None else iou, truth_class=truth_class,
                                class_names=class_names, block=1024 if block is None else block)
    if iou is not None or truth_class is not None:
        raise ConfigError(f"--iou and --truth-class apply to a vector truth (gpkg, fgb, geojson, shp, parquet); "
                          f"{truth} is a raster: leave them out")
    if is_label_volume(pred):
        return evaluate_volume(pred, truth, class_names=class_names, tolerance=tolerance, halo=halo, chunk=block,
                               ignore=ignore)
    if tolerance is not None or halo is not None:
        raise ConfigError(f"a tolerance or halo (mm) applies to volume predictions; {pred} is a raster: leave them out")
    return evaluate(pred, truth, class_names=class_names, block=2048 if block is None else block, ignore=ignore)
