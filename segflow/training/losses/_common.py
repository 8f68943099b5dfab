"""What every loss shares: checks of logits, targets, weight maps and options; the valid-pixel mean.

Logits are ``(N, C, *spatial)`` (``C == 1``: binary, ``C >= 2``: multi-class softmax, or multi-label
sigmoid with targets ``(N, C, *spatial)``); targets, masks and pixel weight maps ``(N, *spatial)``.
Bad tensors raise :class:`~segflow.errors.InputError`, bad options :class:`~segflow.errors.ConfigError`,
each one line saying what was expected.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from segflow.errors import ConfigError, InputError


def _check_logits(logits: Tensor) -> None:
    if not isinstance(logits, Tensor):
        raise InputError(
            f"logits is a {type(logits).__name__}; expected a torch.Tensor; convert with torch.as_tensor"
        )
    if logits.ndim < 3:
        raise InputError(
            f"logits has shape {tuple(logits.shape)}; expected (N, C, *spatial) with >= 1 spatial axis, "
            "e.g. (N, C, H, W); add the batch/channel axes with unsqueeze"
        )
    if not logits.is_floating_point():
        raise InputError(f"logits has dtype {logits.dtype}; expected a floating dtype; pass raw float logits")


def _is_binary(logits: Tensor) -> bool:
    return logits.shape[1] == 1


def _check_multilabel(multilabel: object) -> bool:
    if not isinstance(multilabel, bool):
        raise ConfigError(f"multilabel={multilabel!r}; expected true (one independent sigmoid per class) or false")
    return multilabel


def _is_sigmoid(logits: Tensor, multilabel: bool) -> bool:
    """Whether every channel is an independent sigmoid: binary logits, or ``multilabel`` ones."""
    return _check_multilabel(multilabel) or _is_binary(logits)


def _float_logits(logits: Tensor) -> Tensor:
    """Upcast half precision so softmax/log-sigmoid are computed in float32."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _check_ignore_index(ignore_index: int | None) -> int | None:
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise ConfigError(f"ignore_index={ignore_index!r}; expected an int or None; e.g. ignore_index=255")
    return ignore_index


def _valid_mask(target: Tensor, ignore_index: int | None) -> Tensor:
    if ignore_index is None:
        return torch.ones_like(target, dtype=torch.bool)
    return target != ignore_index


def _binary_target(logits: Tensor, target: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor]:
    """Return the sigmoid target as float ``(N, K, *spatial)`` (ignored elements set to 0) and the valid mask.

    Every one of the ``K`` logit channels is an independent sigmoid: binary (``K == 1``, target
    ``(N, *spatial)`` or ``(N, 1, *spatial)``) or multi-label (target ``(N, K, *spatial)``, one 0/1
    plane per class, ``ignore_index`` per element).
    """
    channels = logits.shape[1]
    spatial = tuple(logits.shape[2:])
    full = (logits.shape[0], channels, *spatial)
    expected = ((logits.shape[0], *spatial), full) if channels == 1 else (full,)
    if tuple(target.shape) not in expected:
        if channels > 1 and tuple(target.shape) == (logits.shape[0], *spatial):
            raise InputError(
                f"sigmoid target has shape {tuple(target.shape)} but the logits {tuple(logits.shape)} have "
                f"{channels} channels; expected 1 channel (binary), or a target {full} of 0/1 per class "
                "(multi-label); use cross_entropy for class indices"
            )
        raise InputError(
            f"{'binary' if channels == 1 else 'multi-label'} target has shape {tuple(target.shape)}; expected "
            f"{' or '.join(map(str, expected))} to match logits {tuple(logits.shape)}"
        )
    if target.ndim != logits.ndim:
        target = target.unsqueeze(1)
    valid = _valid_mask(target, ignore_index)
    target = torch.where(valid, target, torch.zeros_like(target)).to(logits.dtype)
    bad = valid & ~((target >= 0) & (target <= 1))
    if bool(bad.any()):
        value = float(target[bad][0])
        raise InputError(
            f"{'binary' if channels == 1 else 'multi-label'} target contains {value:g}; expected values in "
            f"[0, 1] (or ignore_index={ignore_index}); for class indices use softmax (multi-class) logits"
        )
    return target, valid


def _multiclass_target(logits: Tensor, target: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor]:
    """Return the class-index target ``(N, *spatial)`` (ignored pixels set to 0) and the valid mask."""
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise InputError(
            f"multi-class target has shape {tuple(target.shape)}; expected {expected} (N, *spatial) of class "
            f"indices to match logits {tuple(logits.shape)}; squeeze a channel axis if present"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise InputError(
            f"multi-class target has dtype {target.dtype}; expected integer class indices; "
            "cast with target.long()"
        )
    num_classes = logits.shape[1]
    valid = _valid_mask(target, ignore_index)
    bad = valid & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        value = int(target[bad][0])
        raise InputError(
            f"multi-class target contains class {value}; expected indices in [0, {num_classes}) "
            f"(or ignore_index={ignore_index}); fix the labels or set ignore_index"
        )
    target = torch.where(valid, target, torch.zeros_like(target)).long()
    return target, valid


def _pixel_weight(logits: Tensor, weight: Tensor | None) -> Tensor | None:
    """Validate a per-pixel weight map and return it as ``(N, *spatial)`` in the logits' dtype."""
    if weight is None:
        return None
    spatial = tuple(logits.shape[2:])
    expected = ((logits.shape[0], *spatial), (logits.shape[0], 1, *spatial))
    if not isinstance(weight, Tensor) or tuple(weight.shape) not in expected:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise InputError(
            f"weight map has shape {shape}; expected a tensor of shape {expected[0]} (N, *spatial) "
            f"to match logits {tuple(logits.shape)}"
        )
    if weight.ndim == logits.ndim:
        weight = weight[:, 0]
    weight = weight.to(logits.dtype)
    if bool((weight < 0).any()) or not bool(torch.isfinite(weight).all()):
        raise InputError("weight map contains negative or non-finite values; expected finite weights >= 0")
    return weight


def _finite_float(name: str, value: object, *, low: float | None = None, high: float | None = None) -> float:
    """Return ``value`` as a float, checking it is a finite real number within ``[low, high]``."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    number = float(value) if real else math.nan  # type: ignore[arg-type]
    in_range = (low is None or number >= low) and (high is None or number <= high)
    if not (math.isfinite(number) and in_range):
        bounds = f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
        raise ConfigError(f"{name}={value!r}; expected a finite number in {bounds}; fix the loss config")
    return number


def _class_vector(name: str, values: Sequence[float] | Tensor | None) -> Tensor | None:
    """Validate per-class weights (finite, >= 0) and return them as a 1-D float tensor."""
    if values is None:
        return None
    try:
        vec = None if isinstance(values, str) else torch.as_tensor(values, dtype=torch.float32).flatten()
    except (TypeError, ValueError, RuntimeError):
        vec = None
    if vec is None or vec.numel() == 0 or not bool(torch.isfinite(vec).all()) or bool((vec < 0).any()):
        raise ConfigError(
            f"{name}={values!r}; expected a non-empty sequence of finite weights >= 0, one per class"
        )
    return vec


def _match_classes(name: str, vec: Tensor, logits: Tensor) -> Tensor:
    if vec.numel() != logits.shape[1]:
        raise ConfigError(
            f"{name} has {vec.numel()} entries but the logits have {logits.shape[1]} classes; "
            "give one weight per class"
        )
    return vec.to(device=logits.device, dtype=logits.dtype)


def _weighted_mean(loss: Tensor, valid: Tensor, weight: Tensor | None) -> Tensor:
    """``sum(weight * loss)`` over valid elements divided by the number of valid elements (0 if none).

    ``loss`` and ``valid`` are ``(N, *spatial)`` or, for sigmoid losses, ``(N, K, *spatial)``; the
    pixel ``weight`` ``(N, *spatial)`` then applies to every channel of its pixel.
    """
    if weight is not None:
        loss = loss * (weight.unsqueeze(1) if weight.ndim < loss.ndim else weight)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    count = valid.sum().clamp_min(1)
    return loss.sum() / count
