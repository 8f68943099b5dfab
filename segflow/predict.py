"""Predictor: batches windows through a model on a device and returns class probabilities.

The CPU and CUDA paths are the same code: on CUDA the batch is staged in pinned memory and copied
with ``non_blocking=True``; on the CPU that step is skipped. The forward pass runs at the
precision :func:`segflow.precision.resolve_precision` gives (fp32, or bf16 / fp16 under
``torch.autocast``); probabilities are computed in float32. With test-time augmentation
(``tta="flips"``) every window is also mirrored over its spatial axes and the probabilities of
all copies, flipped back, are averaged.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .batching import BatchedFunction, Window, WindowPredictor, batched
from .compiled import can_compile, channels_last_copy, compile_on, run_padded
from .devices import check_window_memory, resolve_device, window_batch_bytes
from .errors import ConfigError, ModelError
from .models.package import ModelSpec, Normalization
from .precision import autocast_dtype, outputs_agree, precision_for

__all__ = ["TTA_MODES", "BatchedFunction", "Predictor", "WindowPredictor", "check_window_memory", "flip_axes",
           "resolve_device", "window_batch_bytes"]

TTA_MODES = ("none", "flips")  # test-time augmentation: none, or mirroring over every spatial axis


def flip_axes(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every combination of the spatial axes of ``(N, C, *spatial)`` tensors to mirror, identity first.

    4 for 2D (``()``, ``(2,)``, ``(3,)``, ``(2, 3)``: none, y, x, both), 8 for 3D (over z, y, x).
    """
    axes = range(2, 2 + spatial_dims)
    return [c for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r)]


def _flip(x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    return torch.flip(x, axes) if axes else x


class InputNormalize(nn.Module):
    """The package's normalisation as a torch module (same arithmetic as segflow.normalize)."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, spec: Normalization, channels: int, spatial_dims: int):
        super().__init__()
        shape = (1, channels) + (1,) * spatial_dims
        self.low = self.high = None
        if spec.mode == "meanstd":
            assert spec.mean is not None and spec.std is not None
            mean = torch.tensor(spec.mean, dtype=torch.float32).reshape(shape)
            scale = 1.0 / torch.tensor(spec.std, dtype=torch.float32).reshape(shape)
        elif spec.mode == "scale":
            mean = torch.full(shape, -spec.offset / spec.scale if spec.scale else 0.0)
            scale = torch.full(shape, spec.scale)
        elif spec.mode == "ct_window":
            assert spec.center is not None and spec.width is not None
            self.low, self.high = spec.center - spec.width / 2, spec.center + spec.width / 2
            mean = torch.full(shape, self.low)
            scale = torch.full(shape, 1.0 / spec.width)
        else:
            mean = torch.zeros(shape)
            scale = torch.ones(shape)
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """Normalised ``x``; with ``inplace`` the arithmetic overwrites ``x`` (no new batch-sized arrays)."""
        if not inplace:
            x = x.clone()
        if self.low is not None:
            x.clamp_(self.low, self.high)
        return x.sub_(self.mean).mul_(self.scale)


class Predictor:
    """Run a segmentation model over windows and return class probabilities.

    Parameters
    ----------
    module:
        Network taking ``(N, C_in, *tile)`` and returning ``(N, C_out, *tile)``.
    spec:
        The model's contract: normalisation, activation and classes.
    device:
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    batch_size:
        Windows per forward pass (with ``tta``, copies of windows per forward pass).
    precision:
        ``auto``, ``fp32``, ``bf16`` or ``fp16`` (see :func:`segflow.precision.resolve_precision`;
        ``auto`` takes the fastest the package declares and the device supports). The resolved
        value is :attr:`precision`; bf16 / fp16 run the network under ``torch.autocast``.
    tta:
        ``none``, or ``flips``: each window also mirrored over every combination of its spatial
        axes (4 copies in 2D, 8 in 3D, as nnU-Net does); each copy's probabilities are flipped
        back and the copies averaged. The copies go through the network ``batch_size`` at a time.
    optimize:
        On the CPU, trace (if needed) and freeze the network on the first batch (conv/batch-norm
        folding, constants inlined), with 2D and 3D networks in channels-last memory order,
        which oneDNN's convolutions run 1.7-1.8x faster on this project's reference CPU than
        the default order (benchmarks/results). Under bf16 the trace is taken under autocast,
        so freezing stores the weights in bf16. The optimised network is checked against the
        original on one window (to the precision's tolerance) and dropped if they disagree.
    compile:
        ``torch.compile`` the network on its first batch instead (eager networks; :mod:`segflow.compiled`).
    warn:
        Warn when ``precision`` names one the package was not validated for (the engine's
        workers pass False: the run warned once when it was planned).
    """

    def __init__(self, module: nn.Module, spec: ModelSpec, *, device: str = "auto", batch_size: int = 16,
                 precision: str = "auto", tta: str = "none", optimize: bool = True, warn: bool = True,
                 compile: bool = False):
        if tta not in TTA_MODES:
            raise ConfigError(f"unknown test-time augmentation {tta!r}; use one of {', '.join(TTA_MODES)}")
        self.device = resolve_device(device)
        self.precision = precision_for(precision, self.device, spec, warn=warn)
        self.tta = tta
        self.flips = flip_axes(spec.spatial_dims) if tta == "flips" else [()]
        self.spec = spec
        self.batch_size = int(batch_size)
        self.module = module.to(self.device).eval()
        channels = len(spec.input.bands)
        self.normalize = InputNormalize(spec.input.normalization, channels, spec.spatial_dims).to(self.device)
        self.cuda = self.device.type == "cuda"
        self.optimize_pending = optimize and not self.cuda
        self.compile_pending = compile and can_compile(self.module)  # segflow.compiled: instead of freezing
        self.pad_to = 0  # a compiled network gets every batch padded to one shape
        self.memory_format: torch.memory_format | None = None  # set when the optimised network wants it
        self._pinned: list[tuple[torch.Tensor, torch.cuda.Event | None] | None] = [None, None]
        self._turn = 0
        self.amp_dtype = autocast_dtype(self.precision)  # None: fp32

    @property
    def num_classes(self) -> int:
        return len(self.spec.classes)

    def _run(self, module: nn.Module | torch.jit.ScriptModule, x: torch.Tensor) -> torch.Tensor:
        if self.amp_dtype is not None:
            with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype):
                return module(x)
        return module(x)

    def _optimize_on(self, x: torch.Tensor) -> torch.Tensor:
        """Optimise the network on its first batch and return that batch's output.

        A copy of the network is put in channels-last order (2D and 3D inputs), traced (unless
        it is TorchScript already) and frozen, then run on the whole first batch: that work is
        the batch's prediction, not an extra pass. One window is checked against the original
        network run on its own (the last of the batch: a trace that froze the batch size shows
        there), so the only extra cost is one window of the original. The original is kept if
        tracing reports data-dependent Python control flow, if anything fails, or if the
        results disagree. Without a channels-last order (other ranks) the frozen network is
        also passed through ``optimize_for_inference``; in channels-last order that pass is
        slower (measured), so it is left out there.
        """
        module = self.module
        try:
            candidate, xin, fmt = channels_last_copy(module, x)
            with warnings.catch_warnings(record=True) as caught, torch.autocast(
                    "cpu", dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None):
                warnings.simplefilter("always")
                scripted = candidate if isinstance(candidate, torch.jit.ScriptModule) else torch.jit.trace(
                    candidate, xin[:1], check_trace=False)
            if any(issubclass(w.category, torch.jit.TracerWarning) for w in caught):
                return self._run(module, x)  # the trace froze a data-dependent branch or value
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch points to torch.compile
                fast = torch.jit.freeze(scripted.eval())
                if fmt is None:
                    fast = torch.jit.optimize_for_inference(fast)
            out = self._run(fast, xin)
            last = len(x) - 1
            same = outputs_agree(out[last:], self._run(module, x[last:]), self.precision)
        except Exception:
            return self._run(module, x)
        if not same:
            return self._run(module, x)
        self.module = fast
        self.memory_format = fmt
        return out

    def _to_device(self, batch: np.ndarray) -> tuple[torch.Tensor, bool]:
        """Host batch → float32 device tensor, and whether it is a copy (not the caller's memory).

        On CUDA the copy goes through two reused pinned buffers, asynchronously.
        """
        if not self.cuda:
            array = np.ascontiguousarray(batch, dtype=np.float32)
            return torch.from_numpy(array), not np.may_share_memory(array, batch)
        n = len(batch)
        shape = (max(self.batch_size, n), *batch.shape[1:])
        slot = self._pinned[self._turn]
        if slot is None or tuple(slot[0].shape) != shape:
            slot = (torch.empty(shape, dtype=torch.float32, pin_memory=True), None)
        buffer, copied = slot
        if copied is not None:
            copied.synchronize()  # the previous copy out of this buffer has finished
        buffer[:n].numpy()[...] = batch
        tensor = buffer[:n].to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pinned[self._turn] = (buffer, event)
        self._turn ^= 1
        return tensor, True

    def _activate(self, out: torch.Tensor, tile: Sequence[int]) -> torch.Tensor:
        """Probabilities ``(N, K, *tile)`` float32 from the network's output ``(N, C_out, *tile)``.

        softmax over the classes; binary sigmoid: ``[1 - p, p]`` from one channel; multi-label
        sigmoid: each of the K channels on its own; none: as they are.
        """
        expected = (self.spec.output_channels, *tile)
        if out.ndim != len(expected) + 1 or tuple(out.shape[1:]) != expected:
            raise ModelError(
                f"model {self.spec.name!r} returned shape {tuple(out.shape)} for input tiles {tuple(tile)}; "
                f"its model.yaml promises (N, {', '.join(map(str, expected))}): check classes, "
                "output.activation and that the network keeps the input's spatial size"
            )
        out = out.float().contiguous()  # channels-last networks answer in that order
        activation = self.spec.output.activation
        if activation == "softmax":
            return torch.softmax(out, dim=1)
        if activation == "sigmoid":
            p = torch.sigmoid(out)
            return p if self.spec.multilabel else torch.cat([1.0 - p, p], dim=1)
        return out

    @torch.inference_mode()
    def predict_tensor(self, batch: np.ndarray, valid: np.ndarray | None = None) -> torch.Tensor:
        """Probabilities ``(N, K, *tile)`` float32 on the device for windows ``(N, C_in, *tile)``.

        Pixels where ``valid`` (``(N, *tile)`` bool) is False are set to 0 after normalisation,
        so nodata values never reach the network. On CUDA this returns without waiting for
        the GPU.
        """
        x, copied = self._to_device(batch)
        x = self.normalize(x, inplace=copied)
        if valid is not None and not valid.all():
            mask = torch.from_numpy(np.ascontiguousarray(valid)).to(self.device, non_blocking=self.cuda)
            x = torch.where(mask.unsqueeze(1), x, torch.zeros((), device=self.device))
        tile = batch.shape[2:]
        if len(self.flips) == 1:
            return self._activate(self._forward(x), tile)
        return self._augmented(x, tile)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's raw output for ``x`` (optimising it first, on the first call)."""
        if self.compile_pending:
            self.compile_pending = False
            out = compile_on(self, x)
            if out is not None:
                self.optimize_pending = False
                return out
        if self.pad_to and len(x) < self.pad_to:
            return run_padded(self, x)
        if self.optimize_pending:
            self.optimize_pending = False
            return self._optimize_on(x)
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        return self._run(self.module, x)

    def _augmented(self, x: torch.Tensor, tile: Sequence[int]) -> torch.Tensor:
        """Mean probabilities over the mirrored copies of windows ``x`` ``(N, C, *tile)``, flipped back.

        The copies ``(flip, window)``, flip-major, go through the network ``batch_size`` at a time;
        each window's sum is taken in the order of :attr:`flips`.
        """
        n, flips = len(x), self.flips
        total = n * len(flips)
        mean: torch.Tensor | None = None
        for start in range(0, total, self.batch_size):
            stop = min(start + self.batch_size, total)
            pieces = [(f, max(start, f * n) - f * n, min(stop, (f + 1) * n) - f * n)
                      for f in range(start // n, (stop - 1) // n + 1)]
            chunk = [_flip(x[a:b], flips[f]) for f, a, b in pieces]
            probs = self._activate(self._forward(chunk[0] if len(chunk) == 1 else torch.cat(chunk)), tile)
            del chunk
            if mean is None:
                mean = torch.zeros((n, *probs.shape[1:]), dtype=probs.dtype, device=probs.device)
            offset = 0
            for f, a, b in pieces:
                mean[a:b] += _flip(probs[offset : offset + b - a], flips[f])
                offset += b - a
        assert mean is not None
        return mean.div_(len(flips))

    def predict_windows(self, windows: Iterable[Window]) -> Iterator[torch.Tensor]:
        """Probabilities ``(K, *tile)`` on the device for each window, ``batch_size`` windows per forward pass."""
        return batched(self.predict_tensor, windows, self.batch_size, self.device)

    def predict_batch(self, batch: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Like :meth:`predict_tensor`, as a numpy array on the host."""
        return self.predict_tensor(batch, valid).cpu().numpy()

    def __call__(self, windows: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Like :meth:`predict_batch` for any number of windows, ``batch_size`` at a time."""
        if len(windows) == 0:
            return np.zeros((0, self.num_classes, *windows.shape[2:]), dtype=np.float32)
        parts = []
        for i in range(0, len(windows), self.batch_size):
            v = None if valid is None else valid[i : i + self.batch_size]
            parts.append(self.predict_batch(windows[i : i + self.batch_size], v))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]
