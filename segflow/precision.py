"""Numeric precision of the forward pass: which one a run asks for, which one it gets.

``fp32`` is the reference and always available. ``bf16`` runs the network under
``torch.autocast`` with bfloat16 on CUDA devices that support it and on CPUs with native bf16
arithmetic (AVX512_BF16 or AMX-BF16); on a CPU without it PyTorch would emulate bf16 and run
2-4x slower than fp32 (measured on an AVX-512 Xeon without the extension), so it is refused.
``fp16`` runs under autocast with float16, on CUDA only. Probabilities (softmax / sigmoid) are
always computed in float32 from the network's output.

A model package declares the precisions it was validated for (``precisions`` in
``model.yaml``); ``auto`` picks the fastest of those the device supports (bf16, then fp16,
then fp32), and fp32 when the package declares none, so no result changes silently.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from .errors import ConfigError, DeviceError, SegflowWarning
from .models.package import ModelSpec

__all__ = ["PRECISIONS", "autocast_dtype", "cpu_has_native_bf16", "device_precisions", "outputs_agree",
           "precision_for", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_FASTEST_FIRST = ("bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# how far an optimised network may stray from the original run at the same precision: float32
# kernels agree to rounding; bf16 (8 significant bits) and fp16 kernels round differently per layout
_AGREE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}


def _cpuinfo_flags(path: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The feature flags of the first CPU in ``/proc/cpuinfo`` (empty where there is no such file)."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None, capability: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively: ``avx512_bf16`` or ``amx_bf16`` among its flags.

    ``flags`` defaults to ``/proc/cpuinfo``'s; ``capability`` to
    ``torch.backends.cpu.get_cpu_capability()``, accepted when it names AMX (for systems
    without ``/proc/cpuinfo``).
    """
    flags = _cpuinfo_flags() if flags is None else flags
    capability = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    return bool(flags & _CPU_BF16_FLAGS) or "AMX" in capability.upper()


def _cuda_has_bf16(device: torch.device) -> bool:
    """Whether CUDA ``device`` computes bf16 natively (compute capability 8.0 and newer; emulation not counted)."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def device_precisions(device: torch.device) -> tuple[str, ...]:
    """The precisions ``device`` runs at full speed, fastest first (fp32 always, last)."""
    if device.type == "cuda":
        return ("bf16", "fp16", "fp32") if _cuda_has_bf16(device) else ("fp16", "fp32")
    return ("bf16", "fp32") if device.type == "cpu" and cpu_has_native_bf16() else ("fp32",)


def _refusal(asked: str, device: torch.device) -> str:
    if asked == "fp16":
        return (f"--precision fp16 is for CUDA devices, not {device.type}; use --precision bf16 (CPUs with native "
                "bf16) or fp32")
    if device.type == "cuda":
        return (f"--precision bf16 needs a CUDA device with native bf16 (compute capability 8.0 or newer), which "
                f"{device} is not; use --precision fp16 or fp32")
    return ("--precision bf16 needs a CPU with native bf16 (AVX512_BF16 or AMX-BF16 in /proc/cpuinfo's flags), "
            "which this one lacks (emulated bf16 runs slower than fp32); use --precision fp32")


def resolve_precision(asked: str, device: torch.device | None, declared: Sequence[str] | None, *,
                      model: str = "the model", warn: bool = True) -> str:
    """The precision a run gets: ``fp32``, ``bf16`` or ``fp16``.

    ``asked``: ``auto`` or one precision. ``declared``: the precisions the model package was
    validated for (None: fp32 only). ``auto`` gives the fastest declared one ``device``
    supports, else fp32. An explicit precision the device lacks raises :class:`DeviceError`;
    one the package does not declare runs, with a one-line :class:`SegflowWarning` (unless
    ``warn`` is False). ``device`` None: the device is resolved elsewhere (the workers of a
    remote cluster, unknown when the run is planned): ``auto`` is then ``fp32``, so every worker
    computes the same and the run's fingerprint is known; an explicit precision is checked on
    the workers.
    """
    name = asked.strip().lower()
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {asked!r}; use one of {', '.join(PRECISIONS)}")
    validated = set(declared or ()) | {"fp32"}
    if name == "auto":
        if device is None:
            return "fp32"
        supported = device_precisions(device)
        return next(p for p in _FASTEST_FIRST if p in supported and p in validated)
    if device is not None and name not in device_precisions(device):
        raise DeviceError(_refusal(name, device))
    if warn and name not in validated:
        warnings.warn(f"{model} is not validated for {name} (validated: {', '.join(sorted(validated))}, its "
                      "model.yaml's precisions); its labels may differ from fp32's", SegflowWarning, stacklevel=2)
    return name


def precision_for(asked: str, device: torch.device | None, spec: ModelSpec, *, warn: bool = True) -> str:
    """:func:`resolve_precision` for the model of ``spec``, with the precisions it declares.

    A network in an ONNX file runs in onnxruntime, at the file's own precision, which autocast
    cannot change: it gets ``fp32`` (its ``auto``), and an explicit bf16 / fp16 is refused.
    """
    name = asked.strip().lower()
    if spec.weights is not None and spec.weights.lower().endswith(".onnx"):
        resolve_precision(name, None, None, warn=False)  # checks the name
        if name not in ("auto", "fp32"):
            raise ConfigError(f"model {spec.name!r} runs in onnxruntime at its ONNX file's own precision, which "
                              f"--precision {name} cannot change; use --precision auto or fp32")
        return "fp32"
    return resolve_precision(asked, device, spec.precisions, model=f"model {spec.name!r}", warn=warn)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype ``torch.autocast`` runs a resolved ``precision`` with (None: fp32, no autocast)."""
    return _DTYPES.get(precision)


def outputs_agree(out: torch.Tensor, reference: torch.Tensor, precision: str) -> bool:
    """Whether ``out`` matches ``reference`` (``(N, K, *tile)``, same precision) to that precision's tolerance.

    fp32: to 1e-4 relative and absolute. bf16 / fp16: every value within the tolerance times the
    reference's largest magnitude, and the arg-max over channels the same at >= 99 % of pixels.
    """
    out, reference = out.float(), reference.float()
    tol = _AGREE[precision]
    if precision == "fp32":
        return torch.allclose(out, reference, rtol=tol, atol=tol)
    scale = float(reference.abs().max()) or 1.0
    if not torch.allclose(out, reference, rtol=0.0, atol=tol * scale):
        return False
    return reference.shape[1] < 2 or float((out.argmax(1) == reference.argmax(1)).float().mean()) >= 0.99
