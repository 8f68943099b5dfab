"""The device a run computes on, and whether a batch of windows fits its memory."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

from .errors import ConfigError, DeviceError

__all__ = ["check_window_memory", "resolve_device", "window_batch_bytes"]


def window_batch_bytes(tile: Sequence[int], bands: int, classes: int, batch: int) -> int:
    """Bytes segflow itself holds for one forward pass of ``batch`` windows of ``tile`` pixels.

    The float32 input ``(N, C, *tile)``, its validity, the probabilities and their weighted copy
    ``(N, K, *tile)`` each; the network's own activations come on top and depend on the model.
    """
    per_pixel = 4 * bands + 1 + 2 * 4 * classes
    return int(batch) * math.prod(int(t) for t in tile) * per_pixel


def _memory_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_window_memory(tile: Sequence[int], bands: int, classes: int, batch: int, device: torch.device) -> None:
    """Refuse, before anything is allocated, a window batch whose own buffers alone need over half the memory."""
    need = window_batch_bytes(tile, bands, classes, batch)
    have = _memory_bytes(device)
    if have is None or need <= have // 2:
        return
    shape = "x".join(str(int(t)) for t in tile)
    fewer = max(1, int(batch * (have // 2) / need)) if batch > 1 else 0
    hint = f"use --batch {fewer} or a smaller --tile" if fewer else "use a smaller --tile"
    raise ConfigError(f"a batch of {batch} window(s) of {shape} pixels needs about {need / 2**30:.1f} GiB before the "
                      f"network's own memory, over half of the {have / 2**30:.1f} GiB of {device.type} memory here; "
                      f"{hint}")


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cpu``; ``cuda`` or ``cuda:N`` (must exist)."""
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {device!r} was asked for but CUDA is not available here; use --device cpu or auto"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found")
        return dev
    raise DeviceError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
