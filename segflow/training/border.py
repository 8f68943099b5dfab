"""Border weights of training chips from instance ids (the U-Net paper's weight map, per chip).

``border_weights: {w0, sigma}`` in the training config makes every pixel's loss weigh
``w(x) = w_c(x) + w0 * exp(-(d1 + d2)**2 / (2 * sigma**2))`` (Ronneberger et al. 2015), where
``d1``/``d2`` are the distances to the nearest and second-nearest instance and ``w_c`` the pixel's
class weight (``class_weights``, else 1). The border term
(:func:`~segflow.training.losses.border_term`) is computed per chip from the source's instance ids
(:meth:`~segflow.training.sources.ChipSource.read_instances`) read with a margin of
:func:`~segflow.training.losses.weights.border_radius` around the chip, so an instance just outside
the chip still counts, then cut to the chip and moved by the chip's augmentation with its labels.

Background pixels get the term (as in the paper), and so do the pixels where two instances touch
with no gap (there ``d1 = 0`` and ``d2 <= sqrt(2)``): touching buildings get the full border
weight along their contact.

What the weight does to each loss: pixel-wise losses (``ce``, ``bce``, ``weighted_bce``,
``focal``) multiply each pixel's loss by ``w`` (the mean still divides by the number of pixels);
region losses (``dice``, ``jaccard``) weight each pixel's share of the soft intersection and of
the sums (a weighted overlap: a prediction in a border gap costs ``w`` times more); the combined
losses do both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from .losses import border_term
from .losses.weights import border_radius
from .output_config import BorderWeightsConfig
from .sources import ChipSource, Start

__all__ = ["check_instances", "chip_border"]


def check_instances(sources: Sequence[ChipSource], who: str = "border_weights need",
                    remedy: str = "remove border_weights") -> None:
    """Raise ConfigError naming the first source without instance ids (``who``, e.g. border weights, needs them)."""
    for source in sources:
        if not source.has_instances:
            raise ConfigError(f"{who} instance ids, which {source.description} does not have; give "
                              "its pair an 'instances' raster (ids on the labels' grid), use vector labels or "
                              f"synthetic scenes, or {remedy}")


def chip_border(source: ChipSource, start: Start, shape: tuple[int, ...], border: BorderWeightsConfig
                ) -> np.ndarray:
    """The border term ``shape`` float32 of the chip ``[start, start + shape)`` of ``source``.

    Instance ids are read over the chip grown by ``ceil(border_radius(sigma))`` pixels on every
    side (0 beyond the source), the term computed there and cut to the chip.
    """
    margin = math.ceil(border_radius(border.sigma))
    ids = source.read_instances(tuple(s - margin for s in start), tuple(n + 2 * margin for n in shape))
    term = border_term(ids, w0=border.w0, sigma=border.sigma)
    return term[tuple(slice(margin, margin + n) for n in shape)]
