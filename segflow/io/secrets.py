"""Secrets for delivery targets: a Prefect Secret block by name, for passwords kept out of URLs and parameters."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

__all__ = ["load_secret"]


def load_secret(name: str, what: str) -> str:
    """The string held by the Prefect Secret block ``name``; ``what`` names who asked, for the one-line errors."""
    try:
        from prefect.blocks.system import Secret
    except ImportError:
        raise ConfigError(f"{what} names the Prefect Secret block {name!r} but prefect is not installed; "
                          "install segflow[flows] or give the password in the environment") from None
    try:
        block: Any = Secret.load(name)  # a Secret when called from synchronous code
        value = block.get()
    except Exception as exc:  # Prefect's own errors: block missing, API not reachable
        reason = " ".join(str(exc).split())[:200]
        raise ConfigError(f"cannot load the Prefect Secret block {name!r} named by {what}: {reason}; "
                          "create it (prefect block create secret) or fix secret=") from None
    if not isinstance(value, str):
        raise ConfigError(f"the Prefect Secret block {name!r} named by {what} holds a "
                          f"{type(value).__name__}, not a password string")
    return value
