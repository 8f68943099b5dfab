"""Click's usage errors as one line, ``segflow: error: ...``, like segflow's own errors.

Click prints a usage block, a blank line and ``Error: ...``; segflow prints every error as
one line on stderr that names what was wrong and how to fix it, and exits with code 2.
Every command is a :class:`SegflowCommand` and every group a :class:`SegflowGroup`, so that
each usage error knows which command it belongs to; :func:`usage_error_line` formats it.
"""

from __future__ import annotations

import difflib

import click

__all__ = ["SegflowCommand", "SegflowGroup", "UnknownCommand", "usage_error_line"]


class UnknownCommand(click.UsageError):
    """A command name the group does not have; the message lists the ones it has."""


class SegflowCommand(click.Command):
    """A click command whose parse errors always carry its context (click leaves some without)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if exc.ctx is None:
                exc.ctx = ctx
            raise


class SegflowGroup(click.Group):
    """A click group whose mistakes read like segflow's: one line naming the valid commands.

    A group run without a command prints its help (exit 0), as ``--help`` does.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            click.echo(ctx.get_help(), color=ctx.color)
            ctx.exit(0)
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if exc.ctx is None:
                exc.ctx = ctx
            raise

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                             list[str]]:
        name = args[0]
        if (self.get_command(ctx, name) is None and not ctx.resilient_parsing and not name.startswith("-")
                and ctx.token_normalize_func is None):
            commands = self.list_commands(ctx)
            close = difflib.get_close_matches(name, commands, n=1)
            maybe = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownCommand(f"unknown command {name!r}{maybe}; the commands of '{ctx.command_path}' are "
                                 f"{', '.join(commands)}", ctx)
        return super().resolve_command(ctx, args)


def _one_line(text: str) -> str:
    """Join click's message onto one line, in segflow's style (lower-case start, no final period)."""
    text = " ".join(text.split()).rstrip(".")
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


def _param_name(param: click.Parameter | None, hint: object) -> str | None:
    """How the user spells the parameter: ``--blend`` for an option, ``OUTPUT`` for an argument."""
    if isinstance(param, click.Option):
        longs = [o for o in param.opts if o.startswith("--")]
        return (longs or param.opts)[0]
    if param is not None:
        return param.human_readable_name
    if isinstance(hint, str) and hint:
        return hint.replace("'", "")
    if isinstance(hint, list | tuple) and hint:
        return str(hint[0]).replace("'", "")
    return None


def _usage(ctx: click.Context) -> str:
    return " ".join([ctx.command_path, *ctx.command.collect_usage_pieces(ctx)])


def usage_error_line(exc: click.UsageError) -> str:
    """One line for any click usage error: what was wrong, and how to fix it.

    Bad and missing option values name the option and point to the command's ``--help``;
    errors about arguments end with the command's usage line.
    """
    ctx = exc.ctx
    path = ctx.command_path if ctx is not None else "segflow"
    see_help = f"see '{path} --help'"
    if isinstance(exc, click.MissingParameter) and exc.param is not None:
        name = _param_name(exc.param, exc.param_hint)
        if isinstance(exc.param, click.Option):
            metavar = f" {exc.param.metavar}" if exc.param.metavar else ""
            text, fix = f"missing option {name}{metavar}", see_help
        else:
            text = f"missing argument {name}"
            fix = f"usage: {_usage(ctx)}" if ctx is not None else see_help
    elif isinstance(exc, click.BadParameter):
        name = _param_name(exc.param, exc.param_hint)
        message = _one_line(exc.message)
        text, fix = (f"{name}: {message}" if name else message), see_help
    elif isinstance(exc, click.NoSuchOption):
        text = f"unknown option {exc.option_name}"
        if exc.possibilities:
            *others, last = exc.possibilities
            text += f" (did you mean {', '.join(others) + ' or ' if others else ''}{last}?)"
        fix = see_help
    elif isinstance(exc, UnknownCommand):
        return f"segflow: error: {exc.message}"
    elif isinstance(exc, click.BadOptionUsage):
        text, fix = _one_line(exc.format_message()), see_help
    else:
        text = _one_line(exc.format_message())
        fix = f"usage: {_usage(ctx)}" if ctx is not None else see_help
    return f"segflow: error: {text}; {fix}"
