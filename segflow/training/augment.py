"""Training augmentations for overhead and medical imagery, applied identically to image and labels.

Images are channels-first ``(C, Y, X)`` (2D) or ``(C, Z, Y, X)`` (3D); labels have the
spatial axes, ``(Y, X)`` or ``(Z, Y, X)``, after any leading axes of their own (e.g. the
``(K, Y, X)`` planes of a multi-label model, or labels stacked with a weight map). Geometric
transforms (flips along each spatial axis and 90° rotations in the ``(Y, X)`` plane — in-plane
for volumes, so the slice axis Z is kept) move image and labels together; intensity jitter
(per-channel gain and offset plus Gaussian noise) changes the image only and is meant for
normalised images (units of one standard deviation). Every random choice is drawn from the
``numpy.random.Generator`` passed in, in a fixed order, so the same generator state gives the
same result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segflow.errors import ConfigError, InputError

__all__ = ["AugmentParams", "augment", "flip", "jitter_intensity", "rotate90"]


@dataclass(frozen=True)
class AugmentParams:
    """Which augmentations to apply and how strongly.

    Attributes
    ----------
    flips : bool
        Flip each spatial axis with probability 1/2.
    rot90 : bool
        Rotate by a random multiple of 90° in the ``(Y, X)`` plane (only by 0° or 180° when
        the chip is not square in ``(Y, X)``).
    gain : float
        Per-channel gain drawn from ``U(1 - gain, 1 + gain)``; 0 disables it.
    offset : float
        Per-channel offset drawn from ``U(-offset, offset)``; 0 disables it.
    noise : float
        Standard deviation of additive Gaussian noise; 0 disables it.
    """

    flips: bool = True
    rot90: bool = True
    gain: float = 0.0
    offset: float = 0.0
    noise: float = 0.0

    def __post_init__(self) -> None:
        for name in ("gain", "offset", "noise"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 10.0:
                raise ConfigError(
                    f"augment {name}={value!r} is invalid: expected a number in [0, 10); "
                    f"pass e.g. {name}=0.1, or 0 to disable"
                )
        if self.gain >= 1.0:
            raise ConfigError(f"augment gain={self.gain!r} is invalid: expected a number in [0, 1); e.g. gain=0.1")


def _check_pair(image: np.ndarray, labels: np.ndarray) -> None:
    spatial = image.ndim - 1
    if image.ndim not in (3, 4) or labels.ndim < spatial or labels.shape[labels.ndim - spatial:] != image.shape[1:]:
        raise InputError(
            f"augment got image {image.shape} and labels {labels.shape}: expected image (C, Y, X) or "
            "(C, Z, Y, X) and labels ending with its spatial shape; pass channels-first images"
        )


def flip(image: np.ndarray, labels: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Flip image and labels along the spatial ``axes`` (0 = first spatial axis).

    Parameters
    ----------
    image : np.ndarray
        ``(C, *spatial)``.
    labels : np.ndarray
        ``(*lead, *spatial)``, any number of leading axes.
    axes : tuple of int
        Spatial axes to flip; empty for none.

    Returns
    -------
    tuple of np.ndarray
        Flipped (contiguous) image and labels.
    """
    if not axes:
        return image, labels
    flipped_image = np.flip(image, axis=tuple(a + 1 for a in axes))
    lead = labels.ndim - (image.ndim - 1)
    flipped_labels = np.flip(labels, axis=tuple(a + lead for a in axes))
    return np.ascontiguousarray(flipped_image), np.ascontiguousarray(flipped_labels)


def rotate90(image: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotate image and labels by ``k`` x 90° in the ``(Y, X)`` plane (the last two axes).

    Parameters
    ----------
    image : np.ndarray
        ``(C, *spatial)``; the last two axes are Y and X.
    labels : np.ndarray
        ``(*lead, *spatial)``; the last two axes are Y and X.
    k : int
        Number of quarter turns (counter-clockwise, as :func:`numpy.rot90`).

    Returns
    -------
    tuple of np.ndarray
        Rotated (contiguous) image and labels.
    """
    k %= 4
    if k == 0:
        return image, labels
    rotated = np.rot90(image, k, axes=(-2, -1))
    return np.ascontiguousarray(rotated), np.ascontiguousarray(np.rot90(labels, k, axes=(-2, -1)))


def jitter_intensity(
    image: np.ndarray, rng: np.random.Generator, *, gain: float, offset: float, noise: float
) -> np.ndarray:
    """Per-channel ``image * g + o`` plus Gaussian noise, as float32.

    Parameters
    ----------
    image : np.ndarray
        ``(C, *spatial)`` normalised image.
    rng : np.random.Generator
        Source of the random gain, offset and noise (drawn in that order).
    gain, offset, noise : float
        Half-width of the gain around 1, half-width of the offset around 0, noise sigma.

    Returns
    -------
    np.ndarray
        ``(C, *spatial)`` float32 image.
    """
    shape = (image.shape[0],) + (1,) * (image.ndim - 1)
    g = rng.uniform(1.0 - gain, 1.0 + gain, size=shape).astype(np.float32)
    o = rng.uniform(-offset, offset, size=shape).astype(np.float32)
    out = image.astype(np.float32) * g + o
    if noise > 0:
        out += rng.normal(0.0, noise, size=image.shape).astype(np.float32)
    return out


def augment(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, params: AugmentParams
) -> tuple[np.ndarray, np.ndarray]:
    """Apply random flips, in-plane 90° rotation and intensity jitter.

    Parameters
    ----------
    image : np.ndarray
        ``(C, Y, X)`` or ``(C, Z, Y, X)`` normalised image.
    labels : np.ndarray
        ``(Y, X)`` or ``(Z, Y, X)`` class labels, or ``(*lead, Y, X)`` / ``(*lead, Z, Y, X)``
        (label planes, a stacked weight map), moved exactly like the image.
    rng : np.random.Generator
        Source of every random choice; the same state gives the same output.
    params : AugmentParams
        Which augmentations, how strong.

    Returns
    -------
    tuple of np.ndarray
        Augmented ``(image float32, labels)`` with the input shapes (a non-square chip keeps
        its shape because it is only rotated by 0° or 180°).
    """
    _check_pair(image, labels)
    spatial = image.ndim - 1
    flips = rng.random(spatial) < 0.5
    turns = int(rng.integers(4))
    if params.flips:
        image, labels = flip(image, labels, tuple(int(a) for a in np.flatnonzero(flips)))
    if params.rot90:
        square = labels.shape[-1] == labels.shape[-2]
        image, labels = rotate90(image, labels, turns if square else 2 * (turns % 2))
    if params.gain or params.offset or params.noise:
        image = jitter_intensity(image, rng, gain=params.gain, offset=params.offset, noise=params.noise)
    return image.astype(np.float32, copy=False), labels
