"""Weight formats of model packages, chosen by the suffix of ``model.yaml``'s ``weights:`` file.

* ``.safetensors`` (preferred): parameters only; the network is built from ``architecture``.
* ``.pt`` / ``.pth``: a plain state dict (or ``{"state_dict": ...}`` / ``{"model": ...}``),
  loaded only with ``torch.load(..., weights_only=True)``. Pickles that carry code (a whole
  pickled ``nn.Module``, custom classes, ``__reduce__`` payloads) are refused, never run.
* ``.ts``: TorchScript.
* ``.onnx``: run by onnxruntime behind :class:`OnnxModule`, a ``torch.nn.Module`` look-alike.

Every network maps float32 ``(N, C_in, *spatial)`` to ``(N, C_out, *spatial)``, spatial being
``(Y, X)`` or ``(Z, Y, X)``.
"""

from __future__ import annotations

import io
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from .package import ModelSpec

__all__ = [
    "SUPPORTED_SUFFIXES",
    "OnnxModule",
    "apply_state_dict",
    "load_onnx",
    "load_state_dict_file",
    "load_torchscript",
    "pickle_globals",
]

SUPPORTED_SUFFIXES = (".safetensors", ".pt", ".pth", ".ts", ".onnx")
_CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict", "net")
_SAFE_MODULES = ("torch", "collections", "_codecs")
_HARMLESS = frozenset(
    f"{m}.{n}" for m in ("builtins", "__builtin__") for n in ("set", "frozenset", "bytearray", "slice")
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- state dicts


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(t.shape)


def _few(keys: list[str], n: int = 3) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _strip_prefix(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Drop a ``module.`` prefix (``DataParallel``) when every key has it and the model's keys do not."""
    prefix = "module."
    if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in expected):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def apply_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], spec: ModelSpec, filename: str) -> None:
    """Load ``state`` into ``module`` strictly; any mismatch is a one-line :class:`ModelError`.

    The message names a few missing / unexpected keys and shape mismatches and the architecture
    with its args, so the user can fix ``model.yaml`` or re-save the weights.
    """
    own = module.state_dict()
    state = _strip_prefix(dict(state), set(own))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {_shape(state[k])} in file vs {_shape(own[k])} in model"
        for k in set(own) & set(state)
        if _shape(state[k]) != _shape(own[k])
    )
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch {_few(shapes, 2)}")
    if problems:
        arch = spec.architecture
        name, args = (arch.name, dict(arch.args)) if arch is not None else ("?", {})
        raise ModelError(
            f"model {spec.name!r}: weights {filename} do not match architecture {name!r} with args {args}: "
            f"{'; '.join(problems)}; fix architecture.args in model.yaml or re-save the weights from that network"
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. dtype that cannot be copied
        raise ModelError(f"model {spec.name!r}: cannot load weights {filename}: {_first_line(exc)}") from None


def pickle_globals(data: bytes, limit: int = 8) -> list[str]:
    """``module.name`` of every GLOBAL / STACK_GLOBAL in up to ``limit`` consecutive pickles in ``data``.

    Static disassembly only (``pickletools``): nothing is imported or run. STACK_GLOBAL names are
    taken from the two most recent string pushes, which is how ``pickle`` writes them.
    """
    found: list[str] = []
    stream = io.BytesIO(data)
    for _ in range(limit):
        if stream.tell() >= len(data):
            break
        strings: list[str] = []
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name == "GLOBAL" and isinstance(arg, str):
                    found.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str) and "UNICODE" in op.name:
                    strings.append(arg)
        except Exception:  # not (or no longer) a pickle: stop scanning
            break
    return list(dict.fromkeys(found))


def _code_globals(path: Path) -> list[str]:
    """Globals in ``path``'s pickle(s) that are not plain torch / container types."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith("data.pkl")]
                data = zf.read(names[0]) if names else b""
        else:
            with path.open("rb") as f:
                data = f.read(16 << 20)
    except (OSError, zipfile.BadZipFile):
        return []
    return [g for g in pickle_globals(data) if g.split(".")[0] not in _SAFE_MODULES and g not in _HARMLESS]


def _unpickler_reason(exc: BaseException) -> str:
    """The useful part of torch's long weights-only error text."""
    text = str(exc)
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = found.group(1) if found else _first_line(exc)
    return reason.strip()[:160]


def _refuse_pickle(path: Path, exc: BaseException) -> ModelError:
    """Refusal of a pickle the weights-only unpickler would not read; names its code when it can."""
    names = _code_globals(path) or re.findall(r"GLOBAL ([\w.]+)", str(exc))
    fix = "save a state dict (torch.save(model.state_dict())) or safetensors instead"
    if names:
        return ModelError(
            f"refusing to load {path.name}: it is a pickled checkpoint that carries code "
            f"({_few(list(dict.fromkeys(names)))}); {fix}"
        )
    return ModelError(
        f"refusing to load {path.name}: it is not a plain state dict of tensors that torch.load(weights_only=True) "
        f"can read ({_unpickler_reason(exc)}); {fix}"
    )


def _tensor_dict(obj: object) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, Mapping) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in obj.items()):
        return dict(obj)
    return None


def _state_from_checkpoint(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The state dict in what ``torch.load`` returned: the dict itself, or under a usual key."""
    state = _tensor_dict(obj)
    if state is not None:
        return state
    if isinstance(obj, Mapping):
        for key in _CHECKPOINT_KEYS:
            state = _tensor_dict(obj.get(key))
            if state is not None:
                return state
        keys = [str(k) for k in list(obj)[:6]]
        raise ModelError(
            f"{path.name} holds a dict with keys {keys} but no state dict of tensors; expected "
            "{name: tensor} or {'state_dict': {name: tensor}}; save torch.save(model.state_dict())"
        )
    raise ModelError(
        f"{path.name} holds a {type(obj).__name__}, not a state dict; save torch.save(model.state_dict()) "
        "or safetensors instead"
    )


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors``, ``.pt`` or ``.pth`` file, on the CPU, without running any code.

    ``.pt`` / ``.pth`` files are read only with ``torch.load(weights_only=True)``; a pickle that
    needs anything but tensors and plain containers raises :class:`ModelError`.
    """
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(
                f"{path.name} is not a readable safetensors file ({_first_line(exc)}); re-save it with "
                "safetensors.torch.save_file(model.state_dict(), path)"
            ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except RuntimeError as exc:
        if "TorchScript" in str(exc):
            raise ModelError(
                f"{path.name} is a TorchScript archive, not a state dict; rename it to model.ts and set "
                "weights: model.ts in model.yaml"
            ) from None
        raise ModelError(
            f"cannot read {path.name} as a PyTorch state dict ({_first_line(exc).split('. ')[0][:160]}); the file "
            "is corrupt or not a torch.save file: re-save it"
        ) from None
    except Exception as exc:  # UnpicklingError and friends: anything the safe unpickler refused
        raise _refuse_pickle(path, exc) from None
    return _state_from_checkpoint(obj, path)


# --------------------------------------------------------------------------- TorchScript


def load_torchscript(path: Path, name: str) -> nn.Module:
    """A TorchScript module on the CPU."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated but still the loader
            return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"model {name!r}: {path} is not a loadable TorchScript file ({_first_line(exc)})") from None


# --------------------------------------------------------------------------- ONNX


class OnnxModule(nn.Module):
    """An ONNX model behind the ``nn.Module`` calls the predictor makes.

    ``.to(device)`` picks onnxruntime's CUDAExecutionProvider for CUDA devices when installed
    (falling back to the CPU), ``.eval()`` is a no-op, and calling it with a float tensor
    ``(N, C, *spatial)`` returns the first output as a float32 tensor on the input's device.
    """

    def __init__(self, path: Path, name: str, providers: list[str]) -> None:
        super().__init__()
        self.path = path
        self.model_name = name
        self.session = _session(path, name, providers)
        self.input_name = self.session.get_inputs()[0].name

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def to(self, *args: Any, **kwargs: Any) -> OnnxModule:
        """Choose the execution provider for ``device`` (a dtype argument is ignored: I/O stays float32)."""
        candidates = [kwargs.get("device"), *args]
        device = next((d for d in candidates if isinstance(d, str | torch.device)), None)
        if device is not None:
            wanted = _providers(torch.device(device))
            if wanted != self.providers[: len(wanted)]:
                self.session = _session(self.path, self.model_name, wanted)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.jit.is_scripting():
            # onnxruntime runs outside torch: a trace would record its output as a constant
            raise ModelError(f"model {self.model_name!r} runs in onnxruntime and cannot be traced or scripted")
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        try:
            out = self.session.run(None, {self.input_name: array})[0]
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(
                f"model {self.model_name!r}: onnxruntime failed on input {tuple(x.shape)}: {_first_line(exc)}"
            ) from None
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)


def _providers(device: torch.device) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(path: Path, name: str, providers: list[str]) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError(
            f"model {name!r} has ONNX weights but onnxruntime is not installed; pip install 'segflow[onnx]'"
        ) from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:
        raise ModelError(f"model {name!r}: {path} is not a loadable ONNX model ({_first_line(exc)})") from None


def _check_onnx_io(session: Any, spec: ModelSpec, filename: str) -> None:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(
            f"model {spec.name!r}: {filename} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
            "segflow feeds exactly one tensor (N, C, *spatial): export the network with one input"
        )
    shape = list(inputs[0].shape)
    rank = spec.spatial_dims + 2
    if len(shape) != rank:
        raise ModelError(
            f"model {spec.name!r}: {filename} takes a {len(shape)}-D input {shape} but the model is "
            f"{spec.spatial_dims}D and gets (N, C, {'Z, ' if spec.spatial_dims == 3 else ''}Y, X); re-export it"
        )
    spatial = shape[2:]
    if all(isinstance(s, int) for s in spatial) and (not spec.fixed_tile or tuple(spatial) != spec.tile_shape):
        raise ModelError(
            f"model {spec.name!r}: {filename} only takes windows of {tuple(spatial)} pixels; declare "
            f"'tile: {list(spatial)}' and 'fixed_tile: true' in model.yaml, or re-export with dynamic spatial axes"
        )
    channels = shape[1]
    if isinstance(channels, int) and channels != len(spec.input.bands):
        raise ModelError(
            f"model {spec.name!r}: {filename} takes {channels} input channels but model.yaml declares "
            f"{len(spec.input.bands)} bands; fix input.bands or re-export the network"
        )


def load_onnx(path: Path, spec: ModelSpec) -> OnnxModule:
    """An :class:`OnnxModule` for ``path``, its input checked against ``spec``'s bands and dims."""
    module = OnnxModule(path, spec.name, ["CPUExecutionProvider"])
    _check_onnx_io(module.session, spec, path.name)
    return module
