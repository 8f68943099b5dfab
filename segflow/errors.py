"""The one error hierarchy of segflow.

Every error a user can cause derives from :class:`SegflowError` and mixes in the builtin
that fits, so ``except ValueError`` keeps working for library callers. Messages name the
bad value, what was expected, and how to fix it; the CLI prints them as one line.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeliveryError",
    "DeviceError",
    "InputError",
    "ModelError",
    "OutputError",
    "SegflowError",
    "SegflowWarning",
]


class SegflowError(Exception):
    """Root of every error segflow raises on purpose."""

    exit_code = 1


class InputError(SegflowError, ValueError):
    """An input file is missing, unreadable, or not what the step needs."""

    exit_code = 2


class ConfigError(SegflowError, ValueError):
    """A parameter or configuration value is out of range or inconsistent."""

    exit_code = 2


class ModelError(SegflowError, ValueError):
    """A model package is unknown, malformed, unsafe, or does not fit the scene."""

    exit_code = 3


class OutputError(SegflowError, OSError):
    """An output location cannot be written."""

    exit_code = 4


class DeliveryError(SegflowError, ConnectionError):
    """Finished outputs could not be delivered (a PACS down, refusing or not confirming the store).

    ``transient`` is False when the target answered and refused (retrying the same files will not help).
    """

    exit_code = 6

    def __init__(self, *args: object, transient: bool = True):
        super().__init__(*args)
        self.transient = transient


class DeviceError(SegflowError, RuntimeError):
    """The requested compute device is not available."""

    exit_code = 5


class SegflowWarning(UserWarning):
    """A request segflow carries out but that is probably not what was meant (e.g. a wasteful overlap).

    The message is one line; the CLI prints it as ``segflow: warning: <message>``.
    """
