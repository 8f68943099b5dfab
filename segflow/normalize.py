"""A model package's normalisation applied to numpy arrays (training chips, evaluation).

The predictor applies the same arithmetic with torch on the device; tests keep the two equal.
"""

from __future__ import annotations

import numpy as np

from .models.package import Normalization

__all__ = ["normalize_array"]


def normalize_array(image: np.ndarray, norm: Normalization) -> np.ndarray:
    """Normalise ``(C, *spatial)`` raw values to float32 network inputs."""
    shape = (image.shape[0],) + (1,) * (image.ndim - 1)
    if norm.mode == "meanstd":
        assert norm.mean is not None and norm.std is not None
        mean = np.asarray(norm.mean, dtype=np.float32).reshape(shape)
        return (image - mean) * (1.0 / np.asarray(norm.std, dtype=np.float32).reshape(shape))
    if norm.mode == "scale":
        return image * np.float32(norm.scale) + np.float32(norm.offset)
    if norm.mode == "ct_window":
        assert norm.center is not None and norm.width is not None
        low = np.float32(norm.center - norm.width / 2)
        clipped = np.clip(image.astype(np.float32, copy=False), low, np.float32(norm.center + norm.width / 2))
        return (clipped - low) * np.float32(1.0 / norm.width)
    return image.astype(np.float32, copy=False)
