"""Deterministic synthetic CT-like volumes with matching ground truth.

A volume is a slab of a body seen in CT: air around an elliptic body outline (a cylinder along
Z whose cross-section is deformed by smooth noise), soft tissue inside it (a smooth mix of fat
and muscle), one organ (an ellipsoid, rotated in the axial plane and deformed by smooth noise,
brighter than the tissue around it, like a contrast-enhanced liver) and a few small lesions
(ellipsoids inside the organ, darker than it). Edges are softened by a slight blur (partial
volume) and every voxel gets Gaussian noise.

Axis order is always ``(z, y, x)``. Images are Hounsfield units as ``int16``; truth values are
indices into :data:`CLASSES` (``uint8``). Everything comes from one ``numpy`` Generator seeded
with ``seed``: the same seed and shape give the same volume, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from segflow.errors import ConfigError

__all__ = ["CLASSES", "HU", "MIN_SIZE", "VolumeShape", "synthesize_volume"]

CLASSES: tuple[str, ...] = ("background", "organ", "lesion")
"""Class names; the truth value of a class is its index (``background`` is air and body tissue)."""

MIN_SIZE = 16
"""Smallest allowed side of a volume, in voxels."""

VolumeShape = tuple[int, int, int]


@dataclass(frozen=True)
class _Intensities:
    """Mean Hounsfield units of each tissue and the noise levels."""

    air: float = -1000.0
    fat: float = -100.0
    muscle: float = 45.0
    organ: float = 105.0
    lesion: float = 30.0
    texture: float = 10.0  # amplitude of the smooth texture inside organ and lesions
    noise: float = 15.0  # standard deviation of the per-voxel Gaussian noise
    blur: float = 0.7  # partial-volume blur (Gaussian sigma, voxels)


HU = _Intensities()
"""The intensities (Hounsfield units) and noise levels the generator uses."""


def _check_shape(shape: int | Sequence[int]) -> VolumeShape:
    """Validate ``shape`` (one int for a cube or three ints ``(z, y, x)``)."""
    values = [shape] * 3 if isinstance(shape, int | np.integer) else shape
    ok = (
        isinstance(values, Sequence)
        and not isinstance(values, str)
        and len(values) == 3
        and all(isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= MIN_SIZE for v in values)
    )
    if isinstance(shape, bool) or not ok:
        raise ConfigError(
            f"volume shape={shape!r} is invalid: expected one int or three ints (z, y, x), each >= {MIN_SIZE}; "
            "pass e.g. shape=96 or shape=(64, 96, 96)"
        )
    z, y, x = (int(v) for v in values)
    return z, y, x


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or int(seed) < 0:
        raise ConfigError(f"seed={seed!r} is invalid: expected an integer >= 0; pass e.g. seed=0")
    return int(seed)


def _interpolation_matrix(size: int, cell: float) -> npt.NDArray[np.float64]:
    """``(size, lattice)`` weights of smoothstep interpolation between lattice points ``cell`` apart."""
    position = np.arange(size) / cell
    below = np.floor(position).astype(np.int64)
    frac = position - below
    weight = frac * frac * (3.0 - 2.0 * frac)
    matrix = np.zeros((size, int(below[-1]) + 2))
    matrix[np.arange(size), below] = 1.0 - weight
    matrix[np.arange(size), below + 1] = weight
    return matrix


def _smooth_noise(rng: np.random.Generator, shape: VolumeShape, cell: float) -> npt.NDArray[np.float32]:
    """Smooth value noise, zero mean and unit standard deviation, with features about ``cell`` voxels wide."""
    matrices = [_interpolation_matrix(s, cell) for s in shape]
    field = rng.standard_normal(tuple(m.shape[1] for m in matrices))
    for axis, matrix in enumerate(matrices):
        field = np.moveaxis(np.tensordot(matrix, field, axes=(1, axis)), 0, axis)
    field = field - field.mean()
    return (field / max(float(field.std()), 1e-6)).astype(np.float32)


def _coordinates(shape: VolumeShape) -> tuple[npt.NDArray[np.float32], ...]:
    """Voxel-centre coordinates scaled to [-1, 1] along each axis, as broadcastable arrays."""
    axes = [np.linspace(-1.0, 1.0, s, dtype=np.float32) for s in shape]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    return z, y, x


def _body(rng: np.random.Generator, shape: VolumeShape) -> npt.NDArray[np.bool_]:
    """Body mask: an elliptic cylinder along z with a wobbly outline."""
    _, y, x = _coordinates(shape)
    ry, rx = rng.uniform(0.78, 0.88), rng.uniform(0.86, 0.95)
    wobble = _smooth_noise(rng, shape, cell=max(shape) / 3)
    return ((y / ry) ** 2 + (x / rx) ** 2 + 0.06 * wobble) < 1.0


def _organ(rng: np.random.Generator, shape: VolumeShape, body: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Organ mask: a rotated ellipsoid deformed by smooth noise, kept inside the body."""
    z, y, x = _coordinates(shape)
    centre = rng.uniform(-0.15, 0.15, size=3)
    radii = (rng.uniform(0.6, 0.9), rng.uniform(0.45, 0.6), rng.uniform(0.5, 0.7))
    angle = rng.uniform(0.0, np.pi)
    dz, dy, dx = z - centre[0], y - centre[1], x - centre[2]
    u = np.cos(angle) * dy + np.sin(angle) * dx
    v = -np.sin(angle) * dy + np.cos(angle) * dx
    distance = (dz / radii[0]) ** 2 + (u / radii[1]) ** 2 + (v / radii[2]) ** 2
    deform = _smooth_noise(rng, shape, cell=max(shape) / 4)
    inner = ndimage.binary_erosion(body, iterations=2)
    return ((distance + 0.25 * deform) < 1.0) & inner


def _lesions(rng: np.random.Generator, organ: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """One to four small ellipsoids whose centres lie well inside the organ."""
    lesions = np.zeros(organ.shape, dtype=bool)
    depth = ndimage.distance_transform_edt(organ)
    count = int(rng.integers(1, 5))
    grid: tuple[np.ndarray, ...] = tuple(np.indices(organ.shape, sparse=True))
    for _ in range(count):
        radii = rng.uniform(3.0, 7.0, size=3) * min(1.0, min(organ.shape) / 64)
        candidates = np.argwhere(depth > radii.max() + 2)
        if len(candidates) == 0:
            break
        centre = candidates[int(rng.integers(len(candidates)))]
        distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
        lesions |= distance < 1.0
    return lesions & organ


def _tissue(rng: np.random.Generator, shape: VolumeShape) -> npt.NDArray[np.float32]:
    """Soft tissue intensity: a smooth mix between fat and muscle."""
    mix = 1.0 / (1.0 + np.exp(-2.5 * _smooth_noise(rng, shape, cell=max(shape) / 6)))
    return (HU.fat + (HU.muscle - HU.fat) * mix).astype(np.float32)


def synthesize_volume(
    shape: int | Sequence[int], *, seed: int = 0
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.uint8]]:
    """Generate one synthetic CT-like volume and its truth.

    Parameters
    ----------
    shape : int or (int, int, int)
        Volume size ``(z, y, x)`` in voxels (one int for a cube), each side >= :data:`MIN_SIZE`.
    seed : int, optional
        Seed (>= 0); the same seed and shape give the same volume.

    Returns
    -------
    image : np.ndarray
        ``(z, y, x)`` ``int16`` Hounsfield units: air about -1000, fat about -100, muscle
        about 45, organ about 105, lesions about 30, plus noise.
    truth : np.ndarray
        ``(z, y, x)`` ``uint8`` class indices into :data:`CLASSES` (0 background, 1 organ,
        2 lesion); lesions are always inside the organ, the organ inside the body.

    Raises
    ------
    ConfigError
        If ``shape`` or ``seed`` is invalid.
    """
    size = _check_shape(shape)
    rng = np.random.default_rng(_check_seed(seed))
    body = _body(rng, size)
    organ = _organ(rng, size, body)
    lesions = _lesions(rng, organ)
    image = np.where(body, _tissue(rng, size), np.float32(HU.air))
    texture = HU.texture * _smooth_noise(rng, size, cell=4.0)
    image = np.where(organ, HU.organ + texture, image)
    image = np.where(lesions, HU.lesion + texture, image)
    image = ndimage.gaussian_filter(image, HU.blur)
    image += rng.normal(0.0, HU.noise, size=size).astype(np.float32)
    truth = np.zeros(size, dtype=np.uint8)
    truth[organ] = CLASSES.index("organ")
    truth[lesions] = CLASSES.index("lesion")
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16), truth
