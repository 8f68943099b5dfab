"""Score a predicted label volume against a truth volume: per-class Dice, HD95 and surface Dice in mm.

Sources (prediction or truth): a tile-infer output folder of a volume run (its ``mask.zarr``,
else its ``labels.nii.gz``), a ``mask.zarr`` group with 3D ``labels`` and an ``affine``
attribute (voxel ``(z, y, x, 1)`` → RAS mm), or a label NIfTI (``.nii``/``.nii.gz``, one
channel, integer values; read through :func:`~segflow.io.nifti.open_nifti`, axes ``(z, y, x)``
= NIfTI ``(k, j, i)``). Both must lie on one voxel grid: equal shape and affines equal within
1e-3 mm (translation) / 1e-5 (relative); anything else is refused with one line, as is a sheared
(non-orthogonal) grid, whose voxel steps are not per-axis distances. Spacing ``(dz, dy, dx)``
is the norms of the prediction affine's columns. Class ids are the prediction's labels (the
model's class order), names from its ``class_names``.

Label values: 255 in the prediction is "no prediction", counted as none of the classes (a miss);
255 in the truth is unlabelled and left out, like ``ignore`` values (see
:func:`~segflow.volume_metrics.volume_scores`). The metrics, their chunk-by-chunk computation and
its exactness bound (the halo) are described in :mod:`segflow.volume_metrics`. Reading cost: a
``.nii.gz`` truth is decompressed from its start for each chunk read (see :mod:`segflow.io.nifti`);
``gunzip`` a large one first.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, InputError
from .io.atomic import atomic_write_text
from .io.nifti import is_nifti_name, open_nifti
from .tiling import Box
from .volume_metrics import DEFAULT_TOLERANCE_MM, ClassVolumeScore, resolve_halo, volume_scores

__all__ = ["LabelVolume", "VolumeEvalReport", "evaluate_volume", "is_label_volume", "open_label_volume"]


@dataclass(frozen=True)
class LabelVolume:
    """A label volume read by boxes: ``read(box)`` gives the ``(z, y, x)`` labels of ``box``.

    ``affine`` is the 4×4 voxel ``(z, y, x, 1)`` → world (RAS mm) matrix.
    """

    path: Path
    shape: tuple[int, int, int]
    affine: np.ndarray
    class_names: list[str] | None
    read: Callable[[Box], np.ndarray]


def _zarr_labels_ndim(path: Path) -> int | None:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
        array = node["labels"] if isinstance(node, zarr.Group) else node
        return int(array.ndim) if isinstance(array, zarr.Array) else None
    except Exception:  # zarr raises many types for what is not a readable store
        return None


def _store_path(path: Path) -> Path | None:
    """The zarr store of ``path`` (itself, or a run folder's ``mask.zarr``), if any."""
    if path.is_dir() and (path.suffix == ".zarr" or (path / "zarr.json").is_file() or (path / ".zgroup").is_file()):
        return path
    return path / "mask.zarr" if (path / "mask.zarr").is_dir() else None


def is_label_volume(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a volume prediction: a NIfTI file, a 3D ``mask.zarr``, or a run folder holding one
    (or a ``labels.nii.gz`` and no ``labels.tif``)."""
    p = Path(path)
    if p.is_file():
        return is_nifti_name(p)
    if not p.is_dir():
        return False
    store = _store_path(p)
    if store is not None and _zarr_labels_ndim(store) == 3:
        return True
    return store is None and (p / "labels.nii.gz").is_file() and not (p / "labels.tif").is_file()


def _open_zarr(path: Path) -> LabelVolume:
    from .io.mask_store import MaskStore

    store = MaskStore.open(path)
    array, attrs = store.labels, store.attrs
    if array.ndim != 3:
        raise InputError(f"{path}: labels have shape {array.shape}; expected a 3D (z, y, x) label volume")
    affine = np.asarray(attrs.get("affine") or [], dtype=np.float64)
    if affine.shape != (4, 4):
        raise InputError(f"{path} has no 4x4 'affine' attribute (voxel z, y, x -> mm); give the mask.zarr of a "
                         "volume run or its labels.nii.gz")
    names = attrs.get("class_names")
    return LabelVolume(path, tuple(int(s) for s in array.shape), affine,  # type: ignore[arg-type]
                       [str(n) for n in names] if names else None, lambda box: np.asarray(array[box.slices]))


def _open_nifti(path: Path) -> LabelVolume:
    scene = open_nifti(path)
    if scene.num_bands != 1 or scene.volume is None:
        raise InputError(f"{path} has {scene.num_bands} channels; expected a single-channel label volume")
    scale, offset = scene.scaling[0]
    data = scene.data[0]
    plain = np.issubdtype(data.dtype, np.integer) and scale == 1.0 and offset == 0.0

    def read(box: Box) -> np.ndarray:
        block = np.asarray(data[box.slices].compute(scheduler="synchronous"))
        if plain:
            return block
        values = block.astype(np.float64) * scale + offset
        if not np.all(np.isfinite(values) & (values == np.round(values))):
            raise InputError(f"{path} holds non-integer values in voxels {box.start}..{box.stop} (z, y, x); "
                             "expected integer class labels")
        return values.astype(np.int64)

    return LabelVolume(path, scene.spatial_shape, np.asarray(scene.volume.affine, dtype=np.float64),  # type: ignore[arg-type]
                       None, read)


def open_label_volume(path: str | os.PathLike[str], what: str = "prediction") -> LabelVolume:
    """Open a volume run folder, a 3D ``mask.zarr`` or a label NIfTI (``what`` names it in messages)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p} does not exist; give a volume run folder, a mask.zarr or a label NIfTI")
    if p.is_file():
        if not is_nifti_name(p):
            raise InputError(f"{what} {p} is not a label volume; a volume prediction is scored against a label "
                             "NIfTI (.nii/.nii.gz) or a 3D mask.zarr on its grid")
        return _open_nifti(p)
    store = _store_path(p)
    if store is not None:
        return _open_zarr(store)
    if (p / "labels.nii.gz").is_file():
        return _open_nifti(p / "labels.nii.gz")
    raise InputError(f"{what} folder {p} has no mask.zarr or labels.nii.gz; give a volume run folder")


def grid_spacing(pred: LabelVolume, truth: LabelVolume) -> tuple[float, float, float]:
    """The shared grid's spacing ``(dz, dy, dx)`` mm; one :class:`InputError` line when the grids differ."""
    diffs = []
    if pred.shape != truth.shape:
        diffs.append(f"shape {'x'.join(map(str, pred.shape))} vs {'x'.join(map(str, truth.shape))} (z, y, x)")
    if not np.allclose(pred.affine, truth.affine, rtol=1e-5, atol=1e-3):
        worst = float(np.abs(pred.affine - truth.affine).max())
        diffs.append(f"affines differ by up to {worst:.4g} (prediction {np.round(pred.affine[:3], 4).tolist()}, "
                     f"truth {np.round(truth.affine[:3], 4).tolist()})")
    if diffs:
        raise InputError(f"prediction {pred.path} and truth {truth.path} are not on the same voxel grid: "
                         f"{'; '.join(diffs)}; resample the truth onto the prediction's grid with nearest "
                         "neighbour (e.g. nibabel.processing.resample_from_to(truth, labels.nii.gz, order=0))")
    columns = pred.affine[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if not np.all(spacing > 0) or np.abs((columns.T @ columns) / np.outer(spacing, spacing) - np.eye(3)).max() > 1e-4:
        raise InputError(f"{pred.path}: the voxel axes are not orthogonal (sheared affine); surface distances "
                         "need an orthogonal grid; resample both volumes onto one")
    return float(spacing[0]), float(spacing[1]), float(spacing[2])


# --------------------------------------------------------------------------- report


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _fmt(value: float, digits: int = 4) -> str:
    return "-" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.{digits}f}")


@dataclass(frozen=True)
class VolumeEvalReport:
    """Per-class volume scores; ``rows[i]`` is label ``i``, ``names[i]`` its name.

    ``spacing`` ``(dz, dy, dx)`` mm, ``tolerance`` (surface Dice τ) and ``halo`` in mm,
    ``voxel_ml`` the volume of one voxel in mL, ``voxels`` the volume's voxel count.
    """

    rows: list[ClassVolumeScore]
    names: list[str]
    spacing: tuple[float, float, float]
    tolerance: float
    halo: float
    voxel_ml: float
    voxels: int
    pred: str
    truth: str
    ignored: tuple[int, ...] = ()  # ignored truth labels: left out of the means, shown as ignored

    @property
    def mean_dice(self) -> float:
        """Mean Dice over the classes present in the truth or the prediction, ignored ones left out (NaN if none)."""
        values = [r.dice for r in self.rows if not math.isnan(r.dice) and r.label not in self.ignored]
        return float(np.mean(values)) if values else math.nan

    @property
    def mean_surface_dice(self) -> float:
        values = [r.surface_dice for r in self.rows if not math.isnan(r.surface_dice) and r.label not in self.ignored]
        return float(np.mean(values)) if values else math.nan

    def _class_dict(self, r: ClassVolumeScore) -> dict[str, Any]:
        return {"class": self.names[r.label], "label": r.label, "dice": _num(r.dice), "hd95_mm": _num(r.hd95),
                "hd95_state": r.hd95_state, "surface_dice": _num(r.surface_dice),
                "truth_voxels": r.truth_voxels, "pred_voxels": r.pred_voxels,
                "truth_ml": r.truth_voxels * self.voxel_ml, "pred_ml": r.pred_voxels * self.voxel_ml,
                "truth_surface_voxels": r.truth_surface, "pred_surface_voxels": r.pred_surface,
                "ignored": r.label in self.ignored}

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN and inf are null; ``hd95_state`` says which (``undefined`` / ``infinite``), or
        ``lower`` when ``hd95_mm`` is a lower bound (distances beyond the halo)."""
        return {"kind": "volume", "prediction": self.pred, "truth": self.truth, "voxels": self.voxels,
                "spacing_mm": list(self.spacing), "tolerance_mm": self.tolerance, "halo_mm": self.halo,
                "mean_dice": _num(self.mean_dice), "mean_surface_dice": _num(self.mean_surface_dice),
                "classes": [self._class_dict(r) for r in self.rows]}

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`as_dict` as JSON; returns the path."""
        return atomic_write_text(Path(path), json.dumps(self.as_dict(), indent=2) + "\n",
                                 hint="choose a writable location")

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """One row per class: ``class,dice,hd95_mm,hd95_state,surface_dice,truth_ml,pred_ml`` (NaN/inf empty)."""
        keys = ["class", "dice", "hd95_mm", "hd95_state", "surface_dice", "truth_ml", "pred_ml"]
        buffer = StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(keys)
        for r in self.rows:
            row = self._class_dict(r)
            writer.writerow(["" if row[k] is None else (repr(row[k]) if isinstance(row[k], float) else row[k])
                             for k in keys])
        return atomic_write_text(Path(path), buffer.getvalue(), hint="choose a writable location")

    def format_table(self) -> str:
        """An aligned text table per class, then the means and the settings."""
        header = ["class", "Dice", "HD95 mm", f"surface Dice@{self.tolerance:g}mm", "truth mL", "pred mL"]
        body = []
        for r in self.rows:
            hd = _fmt(r.hd95, 2)
            if r.label in self.ignored:
                body.append([self.names[r.label], "ignored", "-", "-", "-", f"{r.pred_voxels * self.voxel_ml:.2f}"])
                continue
            body.append([self.names[r.label], _fmt(r.dice), f"> {hd}" if r.hd95_state == "lower" else hd,
                         _fmt(r.surface_dice), f"{r.truth_voxels * self.voxel_ml:.2f}",
                         f"{r.pred_voxels * self.voxel_ml:.2f}"])
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

        def line(cells: Sequence[str]) -> str:
            return "  ".join([cells[0].ljust(widths[0]),
                              *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

        rule = "-" * len(line(header))
        out = [line(header), rule, *(line(b) for b in body), rule]
        out.append(f"mean Dice {_fmt(self.mean_dice)}   mean surface Dice {_fmt(self.mean_surface_dice)}   "
                   f"spacing {'x'.join(f'{s:g}' for s in self.spacing)} mm (z, y, x)   voxels {self.voxels}")
        if any(r.hd95_state == "lower" for r in self.rows):
            out.append(f"'> d': distances beyond the {self.halo:g} mm halo; the true HD95 is larger (raise --halo)")
        return "\n".join(out)


# --------------------------------------------------------------------------- evaluation


def evaluate_volume(pred: str | os.PathLike[str], truth: str | os.PathLike[str], *,
                    class_names: Sequence[str] | None = None, tolerance: float | None = None,
                    halo: float | None = None, chunk: int | Sequence[int] | None = None,
                    ignore: Sequence[int] = ()) -> VolumeEvalReport:
    """Per-class Dice, HD95 (mm) and surface Dice at ``tolerance`` mm of a volume prediction.

    Parameters
    ----------
    pred : str or PathLike
        A volume run folder, a 3D ``mask.zarr`` or a label NIfTI.
    truth : str or PathLike
        A label NIfTI (or 3D ``mask.zarr``) on the prediction's voxel grid.
    class_names : sequence of str, optional
        Names by label; default the prediction's ``class_names``, else ``class_<i>``.
    tolerance : float, optional
        Surface Dice tolerance in mm (default :data:`~segflow.volume_metrics.DEFAULT_TOLERANCE_MM`).
    halo : float, optional
        Distances up to this many mm are exact (default
        :data:`~segflow.volume_metrics.DEFAULT_HALO_MM`, at least ``tolerance``).
    chunk : int or (int, int, int), optional
        Core chunk in voxels (default 128); bounds memory, never changes the result.
    ignore : sequence of int
        Truth labels to leave out besides 255.
    """
    for v in ignore:
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= v <= 255:
            raise ConfigError(f"ignore value {v!r} is not a label; expected an integer in 0..255, e.g. --ignore 0")
    tau = DEFAULT_TOLERANCE_MM if tolerance is None else tolerance
    p = open_label_volume(pred, "prediction")
    t = open_label_volume(truth, "truth")
    spacing = grid_spacing(p, t)
    names_in = list(class_names) if class_names is not None else (p.class_names or t.class_names or [])
    rows = volume_scores(p.read, t.read, spacing, shape=p.shape, tolerance=tau, halo=halo,
                         chunk=128 if chunk is None else chunk, ignore=ignore, num_classes=len(names_in))
    names = [names_in[i] if i < len(names_in) and names_in[i] else f"class_{i}" for i in range(len(rows))]
    return VolumeEvalReport(rows=rows, names=names, spacing=spacing, tolerance=float(tau),
                            halo=resolve_halo(tau, halo),
                            voxel_ml=abs(float(np.linalg.det(p.affine[:3, :3]))) / 1000.0,
                            voxels=math.prod(p.shape), pred=str(p.path), truth=str(t.path),
                            ignored=tuple(sorted({int(v) for v in ignore})))
