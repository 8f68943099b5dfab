"""Pixel weight maps: the border-emphasising map of the U-Net paper and balanced class weights.

Maps are numpy arrays of the labels' shape, ``(H, W)`` or ``(D, H, W)``, for the ``weight=``
argument of every loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from segflow.errors import ConfigError, InputError

from ._common import _finite_float

__all__ = ["border_term", "unet_weight_map"]

# Border terms below this fraction of w0 are dropped by unet_weight_map (float32 resolution).
_BORDER_TOL = 1e-7


def _check_instance_labels(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim not in (2, 3):
        raise InputError(f"instance_labels has shape {arr.shape}; expected a 2D (H, W) or 3D (D, H, W) array")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise InputError(
            f"instance_labels has dtype {arr.dtype}; expected integer instance ids (0 = background); "
            "cast with .astype(np.int32)"
        )
    if arr.size and arr.min() < 0:
        raise InputError(f"instance_labels contains {int(arr.min())}; expected ids >= 0 (0 = background)")
    return arr


def _balanced_class_weights(foreground: np.ndarray, class_weights: Sequence[float] | None) -> np.ndarray:
    """``w_c`` per pixel: given ``(w_background, w_foreground)`` or sklearn-style balanced weights."""
    if class_weights is not None:
        if isinstance(class_weights, str) or len(class_weights) != 2:
            raise ConfigError(
                f"class_weights={class_weights!r}; expected (w_background, w_foreground) or None (balanced)"
            )
        w_bg = _finite_float("class_weights[0]", class_weights[0], low=0.0)
        w_fg = _finite_float("class_weights[1]", class_weights[1], low=0.0)
    else:
        n_fg = int(np.count_nonzero(foreground))
        n_bg = foreground.size - n_fg
        present = (n_fg > 0) + (n_bg > 0)
        w_fg = foreground.size / (present * n_fg) if n_fg else 1.0
        w_bg = foreground.size / (present * n_bg) if n_bg else 1.0
    return np.where(foreground, w_fg, w_bg)


def _two_nearest(labels: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest instance (``inf`` beyond ``radius`` of its bbox)."""
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    pad = math.ceil(radius)
    for idx, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        crop = tuple(
            slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(box, labels.shape, strict=True)
        )
        dist = ndimage.distance_transform_edt(labels[crop] != idx)
        near1, near2 = d1[crop], d2[crop]
        near2[...] = np.minimum(near2, np.maximum(near1, dist))
        near1[...] = np.minimum(near1, dist)
    return d1, d2


def _check_border(w0: float, sigma: float) -> tuple[float, float]:
    w0 = _finite_float("w0", w0, low=0.0)
    sigma = _finite_float("sigma", sigma, low=0.0)
    if sigma <= 0:
        raise ConfigError(f"sigma={sigma!r}; expected a border width > 0 pixels, e.g. sigma=5")
    return w0, sigma


def border_radius(sigma: float) -> float:
    """Distance (pixels) beyond which an instance no longer adds to :func:`border_term` (below 1e-7 * w0)."""
    return sigma * math.sqrt(2.0 * math.log(1.0 / _BORDER_TOL))


def border_term(instance_labels: np.ndarray, *, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """The border term of the U-Net weight map, ``w0 * exp(-(d1 + d2)**2 / (2 * sigma**2))``.

    ``d1``/``d2`` are the Euclidean distances (pixels) to the nearest and second-nearest
    instance. The term is given to

    * **background pixels** (id 0), as in Fig. 3 of Ronneberger et al. (2015), whose cells are
      drawn with a gap between them;
    * **contact pixels**: pixels of an instance that has a pixel of another instance among its
      ``3**ndim`` neighbours (diagonals included). There ``d1 = 0`` (the pixel's own instance) and
      ``d2 <= sqrt(ndim)``, so instances that touch with no gap get (almost) the full ``w0``
      along their contact, as a 1-pixel gap would; without this the contact got no border weight.

    Other instance pixels get 0; with fewer than two instances the term is 0 everywhere.
    ``d_k`` come from ``scipy.ndimage.distance_transform_edt`` per instance in its bounding box
    grown by :func:`border_radius` (farther pixels would get below ``1e-7 * w0``).

    Parameters
    ----------
    instance_labels : np.ndarray
        ``(H, W)`` or ``(D, H, W)`` integer instance ids, 0 = background; ids need not be
        consecutive.
    w0 : float
        Border weight, >= 0.
    sigma : float
        Border width in pixels, > 0.

    Returns
    -------
    np.ndarray
        ``float32`` array of the labels' shape.
    """
    labels = _check_instance_labels(instance_labels)
    w0, sigma = _check_border(w0, sigma)
    return _border64(labels, w0, sigma).astype(np.float32)


def _border64(labels: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """:func:`border_term` in float64, for checked labels and options."""
    if w0 == 0 or not labels.size:
        return np.zeros(labels.shape, dtype=np.float64)
    _, compact = np.unique(labels, return_inverse=True)
    compact = compact.reshape(labels.shape) + (0 if labels.min() == 0 else 1)
    d1, d2 = _two_nearest(compact, border_radius(sigma))
    with np.errstate(over="ignore"):
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))
    contact = (labels > 0) & (d2 <= math.sqrt(labels.ndim) + 1e-6)
    return np.where((labels == 0) | contact, border, 0.0)


def unet_weight_map(
    instance_labels: np.ndarray,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: Sequence[float] | None = None,
) -> np.ndarray:
    """Pixel weight map of Ronneberger et al. (2015) that emphasises borders between touching objects.

    ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))`` where ``d1``/``d2``
    are the Euclidean distances to the nearest and second-nearest object.

    Choices (documented, as the paper leaves them open):

    * The border term (:func:`border_term`) is added to background pixels (label 0), as in the
      paper's Fig. 3, and to the pixels where two objects touch with no gap (their contact);
      other object pixels get ``w_c`` alone. With fewer than two objects there is no border term.
    * ``d_k`` come from ``scipy.ndimage.distance_transform_edt`` per instance, computed in
      the instance's bounding box grown by ``sigma * sqrt(2 * ln(1e7))``; farther pixels
      would get a border term below ``1e-7 * w0`` (below float32 resolution) and get none.
    * Default ``w_c`` is the balanced inverse frequency of foreground/background:
      ``w_c(k) = n_pixels / (n_classes_present * n_k)``, so ``w_c`` averages to 1 over the
      image (``1`` everywhere if only one class is present).

    Parameters
    ----------
    instance_labels : np.ndarray
        ``(H, W)`` or ``(D, H, W)`` integer instance ids, 0 = background; ids need not be
        consecutive.
    w0 : float
        Border weight, >= 0.
    sigma : float
        Border width in pixels, > 0.
    class_weights : (float, float), optional
        ``(w_background, w_foreground)`` to use instead of the balanced weights.

    Returns
    -------
    np.ndarray
        ``float32`` array of the same shape, for the ``weight=`` argument of the losses.
    """
    labels = _check_instance_labels(instance_labels)
    w0, sigma = _check_border(w0, sigma)
    weights = _balanced_class_weights(labels > 0, class_weights) + _border64(labels, w0, sigma)
    return weights.astype(np.float32)
