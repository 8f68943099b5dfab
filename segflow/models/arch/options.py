"""Validation of architecture keyword options; every failure is a one-line :class:`ConfigError`."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from segflow.errors import ConfigError

__all__ = [
    "COMMON_DEFAULTS",
    "check_choice",
    "check_common",
    "check_fraction",
    "check_int",
    "check_int_tuple",
]

#: Options every architecture accepts.
COMMON_DEFAULTS: dict[str, Any] = {"norm": "batch", "pad_mode": "replicate"}

NORMS = ("batch", "group", "none")
PAD_MODES = ("replicate", "reflect")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(arch: str, key: str, value: Any, *, minimum: int = 1) -> int:
    """An integer >= ``minimum``."""
    if not _is_int(value) or value < minimum:
        raise ConfigError(
            f"{arch}: {key}={value!r} is invalid; expected an integer >= {minimum}. "
            f"Pass e.g. {key}={max(minimum, 1)}"
        )
    return int(value)


def check_int_tuple(
    arch: str,
    key: str,
    value: Any,
    default: Sequence[int],
    *,
    length: int | None = None,
    min_length: int = 1,
    minimum: int = 1,
) -> tuple[int, ...]:
    """A list/tuple of integers >= ``minimum``, of exactly ``length`` or at least ``min_length`` items."""
    ok = isinstance(value, list | tuple) and all(_is_int(v) and v >= minimum for v in value)
    if ok and length is not None:
        ok = len(value) == length
    elif ok:
        ok = len(value) >= min_length
    if not ok:
        size = f"exactly {length}" if length is not None else f"at least {min_length}"
        raise ConfigError(
            f"{arch}: {key}={value!r} is invalid; expected a list of {size} integers "
            f">= {minimum}. Pass e.g. {key}={tuple(default)!r}"
        )
    return tuple(int(v) for v in value)


def check_fraction(arch: str, key: str, value: Any) -> float:
    """A probability in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ConfigError(
            f"{arch}: {key}={value!r} is invalid; expected a number in [0, 1). "
            f"Pass e.g. {key}=0.1, or 0 to disable"
        )
    return float(value)


def check_choice(arch: str, key: str, value: Any, allowed: Sequence[Any]) -> Any:
    """One of ``allowed``."""
    if isinstance(value, bool) or value not in allowed:
        listed = ", ".join(repr(a) for a in allowed)
        raise ConfigError(
            f"{arch}: {key}={value!r} is not allowed; allowed: {listed}. Pass one of those as {key}"
        )
    return allowed[list(allowed).index(value)]


def check_common(arch: str, options: dict[str, Any]) -> tuple[str, str]:
    """Validated ``(norm, pad_mode)``."""
    norm = check_choice(arch, "norm", options["norm"], NORMS)
    pad_mode = check_choice(arch, "pad_mode", options["pad_mode"], PAD_MODES)
    return str(norm), str(pad_mode)
