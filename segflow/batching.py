"""Windows in batches: the :class:`WindowPredictor` protocol the stitcher asks for, and a plain function as one.

A window is ``(data, valid)``: data ``(C, *tile)`` float32 and validity ``(*tile)`` bool or None.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import numpy as np
import torch

__all__ = ["BatchedFunction", "Window", "WindowPredictor", "batched"]

Window = tuple[np.ndarray, "np.ndarray | None"]


class WindowPredictor(Protocol):
    """Anything that turns windows into class probabilities, batching them as it sees fit."""

    def predict_windows(self, windows: Iterable[Window]) -> Iterator[torch.Tensor]: ...


def batched(predict: Callable[[np.ndarray, np.ndarray | None], np.ndarray | torch.Tensor],
             windows: Iterable[Window], batch_size: int, device: torch.device | None) -> Iterator[torch.Tensor]:
    """Stack ``batch_size`` windows ``(C, *tile)`` (and validity ``(*tile)`` or None) per call of ``predict``."""
    batch: list[Window] = []

    def flush() -> Iterator[torch.Tensor]:
        x = np.stack([w[0] for w in batch])
        v = None if batch[0][1] is None else np.stack([w[1] for w in batch])  # type: ignore[misc]
        batch.clear()
        probs = torch.as_tensor(predict(x, v), device=device)
        del x, v
        yield from probs

    for window in windows:
        batch.append(window)
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()


class BatchedFunction:
    """A plain ``predict(windows, valid) -> probabilities`` function as a :class:`WindowPredictor`."""

    def __init__(self, predict: Callable[[np.ndarray, np.ndarray | None], np.ndarray | torch.Tensor],
                 batch_size: int = 16, device: torch.device | str | None = None):
        self.predict, self.batch_size = predict, int(batch_size)
        self.device = None if device is None else torch.device(device)

    def predict_windows(self, windows: Iterable[Window]) -> Iterator[torch.Tensor]:
        return batched(self.predict, windows, self.batch_size, self.device)
