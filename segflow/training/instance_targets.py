"""Mask R-CNN targets of a training chip from its instance ids and class labels.

Every instance id ``k > 0`` present in the chip is one object: its mask is ``ids == k``, its class the
most frequent class among its pixels whose label is not :data:`~segflow.training.sources.IGNORE`
(ties: the smaller class), its box the tight ``(x1, y1, x2, y2)`` around the mask in pixels, pixel
``(i, j)`` covering ``[j, j + 1) x [i, i + 1)`` (so ``x2`` is the last column + 1). Objects whose
class is the background (0), or that have no labelled pixel, are left out. A chip without objects
gives empty targets (``G = 0``), which the model trains on as all background.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ..errors import InputError
from .sources import IGNORE

__all__ = ["instance_targets"]


def instance_targets(labels: np.ndarray, ids: np.ndarray, num_classes: int) -> dict[str, torch.Tensor]:
    """The targets of one chip for ``MaskRCNN(images, targets)``.

    Parameters
    ----------
    labels : np.ndarray
        ``(Y, X)`` class indices (``IGNORE`` = unlabelled).
    ids : np.ndarray
        ``(Y, X)`` instance ids (0 = no object).
    num_classes : int
        Classes of the model, background included; objects of a class ``>= num_classes`` are refused.

    Returns
    -------
    dict
        ``boxes`` ``(G, 4)`` float32 ``(x1, y1, x2, y2)``, ``labels`` ``(G,)`` int64 in ``1..K``,
        ``masks`` ``(G, Y, X)`` uint8, objects in increasing id order.
    """
    labels, ids = np.asarray(labels), np.asarray(ids)
    if labels.ndim != 2 or ids.shape != labels.shape:
        raise InputError(f"instance targets need (Y, X) labels and ids of one shape, got {labels.shape} and "
                         f"{ids.shape}")
    values, dense = np.unique(ids, return_inverse=True)
    dense = dense.reshape(ids.shape) + (0 if values.size and values[0] == 0 else 1)
    count = int(values.size - (1 if values.size and values[0] == 0 else 0))
    boxes, classes, masks = [], [], []
    for k, where in enumerate(ndimage.find_objects(dense, max_label=count), start=1):
        assert where is not None
        inside = dense[where] == k
        pixels = labels[where][inside]
        pixels = pixels[pixels != IGNORE]
        if pixels.size == 0:
            continue
        votes = np.bincount(pixels.astype(np.int64))
        cls = int(np.argmax(votes))
        if cls == 0:
            continue
        if cls >= num_classes:
            raise InputError(f"an object's pixels have class {cls}, but the model has {num_classes} classes; fix the "
                             "labels or declare more classes")
        mask = np.zeros(ids.shape, dtype=np.uint8)
        mask[where] = inside
        boxes.append((where[1].start, where[0].start, where[1].stop, where[0].stop))
        classes.append(cls)
        masks.append(mask)
    h, w = ids.shape
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(classes, dtype=torch.int64),
        "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.uint8),
    }
