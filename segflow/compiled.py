"""``torch.compile`` of a Predictor's network (``--compile``): measured to help, so offered, never silent.

On the 2-core reference CPU, inductor's compiled MONAI UNet (channels 16-256, batch 8 × 256²) ran a
forward pass in 0.033 s against 0.055 s for the traced, frozen, channels-last network the CPU path
uses otherwise (benchmarks/README.md). Compiling costs time once per process: about 20 s cold, about
2 s when inductor's on-disk cache already holds the kernels (a nightly batch on the same machine), so
it pays for scenes of thousands of windows, not for small ones; hence an option, off by default.

Only eager networks are compiled: TorchScript and ONNX packages run as they are (dynamo cannot see
inside them). The compiled network is run on the whole first batch, padded to the batch size (so
every call has one shape and nothing is compiled twice: later short batches are padded too), and
checked against the original network on one window to the precision's tolerance; if compiling
fails (no C++ compiler, an unsupported operation) or the results disagree, the Predictor keeps its
usual network.
"""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Any

import torch

from .precision import outputs_agree

if TYPE_CHECKING:
    from .predict import Predictor

__all__ = ["can_compile", "channels_last_copy", "compile_on", "padded", "run_padded"]

_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def channels_last_copy(module: Any, x: torch.Tensor) -> tuple[Any, torch.Tensor, torch.memory_format | None]:
    """A copy of ``module`` and ``x`` in channels-last order (2D and 3D batches), and that order (None: other
    ranks, copied as they are). The CPU path freezes and the compiled path compiles networks in this order."""
    candidate = copy.deepcopy(module)
    fmt = _CHANNELS_LAST.get(x.ndim)
    if fmt is None:
        return candidate, x, None
    return candidate.to(memory_format=fmt), x.contiguous(memory_format=fmt), fmt


def can_compile(module: torch.nn.Module) -> bool:
    """Whether ``module`` is an eager network that ``torch.compile`` can trace (not TorchScript, not ONNX)."""
    from .models.formats import OnnxModule

    return not isinstance(module, (torch.jit.ScriptModule, OnnxModule))


def padded(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` ``(N, ...)`` with zero windows appended up to ``size`` (itself when ``N >= size``)."""
    if len(x) >= size:
        return x
    pad = torch.zeros((size - len(x), *x.shape[1:]), dtype=x.dtype, device=x.device)
    out = torch.cat([x, pad])
    return out.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
        memory_format=torch.channels_last) and x.ndim == 4 else out


def compile_on(predictor: Predictor, x: torch.Tensor) -> torch.Tensor | None:
    """Compile ``predictor``'s network on its first batch ``x`` and return that batch's raw output, or None
    (the network stays as it was) when compiling fails or the compiled network disagrees with it."""
    module = predictor.module
    try:
        candidate, xin, fmt = channels_last_copy(module, x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled: Any = torch.compile(candidate, dynamic=False)
            out = predictor._run(compiled, padded(xin, predictor.batch_size))[: len(x)]
        last = len(x) - 1
        if not outputs_agree(out[last:], predictor._run(module, x[last:]), predictor.precision):
            return None
    except Exception:  # no compiler, an operation inductor does not handle...: the usual network
        return None
    predictor.module = compiled
    predictor.memory_format = fmt
    predictor.pad_to = predictor.batch_size
    return out


def run_padded(predictor: Predictor, x: torch.Tensor) -> torch.Tensor:
    """The compiled network's output for a batch shorter than the compiled one, padded to its shape."""
    fmt = predictor.memory_format or torch.contiguous_format
    return predictor._run(predictor.module, padded(x.contiguous(memory_format=fmt), predictor.pad_to))[: len(x)]
