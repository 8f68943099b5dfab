"""Training chips from NIfTI image/label pairs, taken on the model's voxel grid (spacing-aware chips).

Every pair is seen through :func:`segflow.resample.model_grid` for one *target*: the model's
voxel ``spacing`` ``(dz, dy, dx)`` in mm and its ``orientation`` (axis codes of voxel x, y, z,
RAS by default). The target is ``model.spacing`` when the config gives it, else the per-axis
median over the training pairs of their spacing along the model's axes (nnU-Net's default
target spacing; it does not switch to the 10th percentile for very anisotropic data). A chip of
``n`` voxels therefore spans ``n * spacing`` mm in every volume, whatever its own voxel size,
axis order or direction, and is exactly what inference (``tile-infer``, which resamples every
input to the package's ``spacing`` and ``orientation``) feeds the network: intensities are
resampled linearly (NaN voxels as 0 and invalid, as there), labels by nearest neighbour
(:func:`segflow.resample.read_model_box`).

Values. Images are read as nibabel's ``get_fdata`` values (``scl_slope``/``scl_inter``
applied), so the package says ``values: scaled``. Model band ``k`` reads channel ``index``
(1-based; its position when no index is given) of a 4D image. Labels are one channel of
integer class ids ``0..K-1`` (any stored dtype; float values must be whole numbers), 255 =
unlabelled; NaN label voxels are unlabelled. Image and labels must share shape and affine
(within 0.001 mm), or the pair is refused.

Reading cost. A chip reads, from each of the two files, the input voxels its model-grid box
covers plus one voxel on each side: about ``chip[t] * spacing[t] / input_spacing + 3`` voxels
along each axis (one box read per file, sliced to that box inside nibabel; never the whole
volume). For an uncompressed ``.nii`` that is all that is read; a ``.nii.gz`` cannot seek, so
each read decompresses the stream from its start to the box's last byte (on average half the
file): keep large training volumes as ``.nii``. Opening a ``.nii.gz`` checks its whole stream
once (see :mod:`segflow.io.nifti`).

Foreground locations. For foreground oversampling (:mod:`segflow.training.sampling`) a training
source scans its label file once, slab by slab as :func:`~segflow.io.nifti.open_nifti` chunks it
(never the whole volume at once), keeping a uniform random sample of at most
:data:`LOCATIONS_PER_CLASS` voxel positions per class (nnU-Net keeps 10 000 too), mapped onto
the model grid; the scan also checks every label value.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError
from ..geometry import VolumeGeometry
from ..io.nifti import is_nifti_name, open_nifti
from ..resample import GridMap, model_grid, read_model_box
from ..scene import Scene
from ..tiling import Box
from .config import ModelConfig
from .data_config import NiftiConfig
from .locations import LOCATIONS_PER_CLASS, LocationReservoir
from .sources import IGNORE, Chip, ChipSource, Start

__all__ = ["LOCATIONS_PER_CLASS", "NiftiPair", "NiftiSource", "VolumeTarget", "expand_pairs", "model_axis_spacing",
           "nifti_sources", "open_pair", "resolve_target", "target_of"]

_AFFINE_TOLERANCE = 1e-3  # mm: image and labels affines may differ by this much (float32 headers)


@dataclass(frozen=True)
class VolumeTarget:
    """The model grid: ``spacing`` ``(dz, dy, dx)`` mm along the model's axes, ``orientation``
    (axis codes of voxel x, y, z, e.g. ``RAS``) and how the spacing was chosen (for reports)."""

    spacing: tuple[float, float, float]
    orientation: str
    origin: str = "model.spacing"


def _stem(path: str, prefix: str, suffix: str) -> str:
    return path[len(prefix) : len(path) - len(suffix)]


def expand_pairs(entries: Sequence[NiftiConfig]) -> list[tuple[Path, Path]]:
    """The ``(image, labels)`` paths of ``entries``, patterns expanded (sorted by image path).

    Raises
    ------
    InputError
        If a pattern matches no image, or an image has no label file.
    """
    pairs: list[tuple[Path, Path]] = []
    for entry in entries:
        if "*" not in entry.image:
            pairs.append((Path(entry.image), Path(entry.labels)))
            continue
        prefix, suffix = entry.image.split("*")
        found = sorted(glob.glob(glob.escape(prefix) + "*" + glob.escape(suffix)))
        if not found:
            raise InputError(f"NIfTI image pattern {entry.image!r} matches no file; check the path in the training "
                             "config (relative paths start at the current directory)")
        for image in found:
            labels = Path(entry.labels.replace("*", _stem(image, prefix, suffix)))
            if not labels.exists():
                raise InputError(f"image {image} (from {entry.image!r}) has no labels {labels} (from "
                                 f"{entry.labels!r}); add the label file or fix the labels pattern")
            pairs.append((Path(image), labels))
    return pairs


@dataclass(frozen=True)
class NiftiPair:
    """An opened pair: ``image`` holds the model's bands (scaled values), ``labels`` one channel; both lazy."""

    image: Scene
    labels: Scene
    image_path: Path
    labels_path: Path

    @property
    def geometry(self) -> VolumeGeometry:
        """The pair's voxel-to-world geometry (the image's; the labels' is the same)."""
        assert self.image.volume is not None
        return self.image.volume


def _open(path: Path, what: str) -> Scene:
    if not is_nifti_name(path):
        raise InputError(f"{what} {path} is not named .nii or .nii.gz; give a NIfTI file in the training config")
    return open_nifti(path)


def _channels(bands: Sequence[tuple[str, int | None]], scene: Scene, path: Path) -> list[int]:
    chosen = []
    for position, (name, index) in enumerate(bands):
        number = index if index is not None else position + 1
        if number > scene.num_bands:
            raise InputError(f"model band {name!r} is channel {number} but {path} has {scene.num_bands} channel(s); "
                             "fix the band's index in model.bands")
        chosen.append(number - 1)
    return chosen


def _check_same_grid(image: Scene, labels: Scene, image_path: Path, labels_path: Path) -> None:
    fix = "resample the labels onto the image grid (e.g. nibabel.processing.resample_from_to(labels, image, order=0))"
    if labels.spatial_shape != image.spatial_shape:
        raise InputError(f"labels {labels_path} have {labels.spatial_shape} voxels (z, y, x) but image {image_path} "
                         f"has {image.spatial_shape}: a pair must share shape and affine; {fix}")
    assert image.volume is not None and labels.volume is not None
    gap = float(np.abs(np.asarray(image.volume.affine) - np.asarray(labels.volume.affine)).max())
    if gap > _AFFINE_TOLERANCE:
        raise InputError(f"labels {labels_path} and image {image_path} have different voxel-to-world affines "
                         f"(up to {gap:.4g} mm apart): a pair must share shape and affine; {fix}")
    if labels.num_bands != 1:
        raise InputError(f"labels {labels_path} have {labels.num_bands} channels: expected one volume of class ids; "
                         "keep one, e.g. nibabel img.slicer[..., 0]")


def open_pair(image: str | Path, labels: str | Path, bands: Sequence[tuple[str, int | None]]) -> NiftiPair:
    """Open a NIfTI image (its model bands, ``(name, 1-based channel or None)``) and its labels, lazily.

    Raises
    ------
    InputError
        If a file is missing or not NIfTI, a band's channel is missing, or the two differ in
        shape or affine, or the labels have more than one channel.
    """
    image_path, labels_path = Path(image), Path(labels)
    image_scene = _open(image_path, "image")
    labels_scene = _open(labels_path, "labels")
    _check_same_grid(image_scene, labels_scene, image_path, labels_path)
    picked = image_scene.select_bands(_channels(bands, image_scene, image_path)).scaled()
    return NiftiPair(picked, labels_scene.scaled(), image_path, labels_path)


def model_axis_spacing(pair: NiftiPair, orientation: str) -> tuple[float, float, float]:
    """The pair's own voxel spacing along the model's axes ``(z, y, x)`` once turned to ``orientation``."""
    grid = model_grid(pair.geometry, pair.image.spatial_shape, None, orientation)
    spacing = pair.geometry.spacing if grid is None else grid.geometry.spacing
    return (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def resolve_target(model: ModelConfig, pairs: Sequence[NiftiPair]) -> VolumeTarget:
    """``model.spacing`` or the per-axis median spacing of ``pairs`` (mm, 4 decimals), and the orientation."""
    orientation = model.orientation or "RAS"
    if model.spacing is not None:
        return VolumeTarget((model.spacing[0], model.spacing[1], model.spacing[2]), orientation)
    if not pairs:
        raise ConfigError("no NIfTI pair to take the median spacing from; give model.spacing: [dz, dy, dx] in mm")
    median = np.median(np.array([model_axis_spacing(p, orientation) for p in pairs]), axis=0)
    spacing = (round(float(median[0]), 4), round(float(median[1]), 4), round(float(median[2]), 4))
    return VolumeTarget(spacing, orientation, f"median of {len(pairs)} training volume(s)")


def _class_ids(values: np.ndarray, valid: np.ndarray, num_classes: int, path: Path, origin: Sequence[int],
               model_grid: bool) -> np.ndarray:
    """``values`` ``(z, y, x)`` as uint8 class ids, :data:`IGNORE` where not ``valid``; refuse anything else.

    A bad value is located by its model-grid voxel (z, y, x), or by the file's voxel (i, j, k).
    """
    known = ((values >= 0) & (values < num_classes)) | (values == IGNORE)
    if values.dtype.kind == "f":
        known &= values == np.round(values)
    bad = valid & ~known
    if bad.any():
        first = np.argwhere(bad)[0]
        at = [int(a) + int(o) for a, o in zip(first, origin, strict=True)]
        where = f"model-grid voxel (z, y, x) {tuple(at)}" if model_grid else f"voxel (i, j, k) {tuple(at[::-1])}"
        raise InputError(f"{path} holds label {values[tuple(first)].item():g} at {where}: expected class ids "
                         f"0..{num_classes - 1} or {IGNORE} (unlabelled); fix the labels or declare more classes")
    return np.where(valid, values, IGNORE).astype(np.uint8)


class NiftiSource(ChipSource):
    """A NIfTI image/label pair seen on the model grid of ``target``: ``spatial_shape`` is that grid's."""

    def __init__(self, pair: NiftiPair, target: VolumeTarget, num_classes: int):
        self.pair, self.target, self.num_classes = pair, target, num_classes
        shape = pair.image.spatial_shape
        self.grid: GridMap | None = model_grid(pair.geometry, shape, target.spacing, target.orientation)
        self.spatial_shape = shape if self.grid is None else self.grid.shape
        self.geometry = pair.geometry if self.grid is None else self.grid.geometry  # of the model grid
        self.num_bands = pair.image.num_bands
        own = "x".join(f"{s:g}" for s in pair.geometry.spacing)
        self.description = (f"{pair.image_path} with labels {pair.labels_path}: {'x'.join(map(str, shape))} vox of "
                            f"{own} mm -> model grid {'x'.join(map(str, self.spatial_shape))} vox of "
                            f"{'x'.join(f'{s:g}' for s in target.spacing)} mm {target.orientation}")
        self._locations: dict[int, np.ndarray] | None = None

    def _read(self, scene: Scene, box: Box, labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if self.grid is not None:
            return read_model_box(scene, self.grid, box, labels=labels)
        data, valid = scene.read(box)
        return (data if labels else np.nan_to_num(data.astype(np.float32, copy=False))), valid

    def read_inside(self, start: Start, shape: tuple[int, ...]) -> Chip:
        box = Box(tuple(start), tuple(a + n for a, n in zip(start, shape, strict=True)))
        image, image_valid = self._read(self.pair.image, box, labels=False)
        labels, labels_valid = self._read(self.pair.labels, box, labels=True)
        valid = np.ones(shape, dtype=bool)
        for part in (image_valid, labels_valid):
            if part is not None:
                valid &= part
        ids = _class_ids(labels[0], valid, self.num_classes, self.pair.labels_path, start, model_grid=True)
        return Chip(image.astype(np.float32, copy=False), ids, valid)

    def class_locations(self) -> dict[int, np.ndarray]:
        """Up to :data:`LOCATIONS_PER_CLASS` model-grid voxels ``(N, 3)`` per class present (scanned once)."""
        if self._locations is None:
            self._locations = self._scan()
        return self._locations

    def _scan(self) -> dict[int, np.ndarray]:
        reservoir = LocationReservoir()  # (N, 3) input voxels per class
        data = self.pair.labels.data
        z0 = 0
        for depth in data.chunks[1]:
            block = np.asarray(data[0, z0 : z0 + depth].compute(scheduler="synchronous"))
            finite = np.isfinite(block) if block.dtype.kind == "f" else np.ones(block.shape, dtype=bool)
            ids = _class_ids(block, finite, self.num_classes, self.pair.labels_path, (z0, 0, 0), model_grid=False)
            reservoir.add(ids, (z0, 0, 0))
            z0 += depth
        return {k: self._to_model(coords) for k, coords in reservoir.result().items()}

    def _to_model(self, coords: np.ndarray) -> np.ndarray:
        """Input voxels ``(N, 3)`` (z, y, x) as the nearest model-grid voxels ``(N, 3)``."""
        if self.grid is None:
            return coords.astype(np.int64)
        grid = self.grid
        out = [np.clip(np.rint(grid.to_model(coords[:, grid.axis[t]].astype(float), t)), 0, grid.shape[t] - 1)
               for t in range(3)]
        return np.stack(out, axis=1).astype(np.int64)


def nifti_sources(entries: Sequence[NiftiConfig], model: ModelConfig, target: VolumeTarget | None = None
                  ) -> list[NiftiSource]:
    """One :class:`NiftiSource` per pair of ``entries``, on ``target`` (default: :func:`resolve_target` of these)."""
    bands = [(b.name, b.index) for b in model.bands]
    pairs = [open_pair(image, labels, bands) for image, labels in expand_pairs(entries)]
    chosen = target if target is not None else resolve_target(model, pairs)
    return [NiftiSource(pair, chosen, len(model.classes)) for pair in pairs]


def target_of(sources: Sequence[ChipSource]) -> VolumeTarget | None:
    """The model grid the NIfTI sources among ``sources`` are seen on (None when there is none)."""
    return next((s.target for s in sources if isinstance(s, NiftiSource)), None)

