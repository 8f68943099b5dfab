"""Options and helpers shared by several commands, defined once.

Each decorator adds one click option with the same flags everywhere; where commands differ
(the default output folder, what ``--model`` defaults to) the decorator takes it as an argument.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

__all__ = ["device_option", "model_option", "output_option", "progress_bar", "quiet_option"]

F = TypeVar("F", bound=Callable[..., Any])


def output_option(*, default: Path | None = None, help: str, required: bool = False) -> Callable[[F], F]:
    """``--output/-o DIR`` passed to the command as ``output_dir``; its default shown in ``--help``."""
    return click.option("--output", "-o", "output_dir", default=default, required=required,
                        show_default=default is not None, type=click.Path(path_type=Path), help=help)


def model_option(*, help: str) -> Callable[[F], F]:
    """``--model/-m NAME_OR_PATH``: a built-in model name or a model package path (default None)."""
    return click.option("--model", "-m", default=None, help=help)


def device_option(*, default: str | None, help: str) -> Callable[[F], F]:
    """``--device``: auto, cpu, cuda or cuda:N."""
    return click.option("--device", default=default, show_default=default is not None, help=help)


def quiet_option(*, help: str) -> Callable[[F], F]:
    """``--quiet/-q`` flag."""
    return click.option("--quiet", "-q", is_flag=True, help=help)


@contextmanager
def progress_bar(enabled: bool, unit: str) -> Iterator[Callable[[int, int], None] | None]:
    """A tqdm bar on stderr when it is a terminal; None (no output) otherwise.

    Yields a callback ``update(done, total)`` for library calls that report progress in
    whole units (chunks, steps), or None when nothing is to be shown.
    """
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit=unit, desc="segflow", file=sys.stderr, dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()
