"""What every ``tripflow`` command shares: how its Typer app is built, and the stderr console
(stdout is kept for ``--json``)."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

#: Rich output on stderr; a fixed width when it is not a terminal (CI logs, pipes).
console = Console(stderr=True, width=None if sys.stderr.isatty() else 110)


def command_group(help_text: str) -> typer.Typer:
    """A Typer app with tripflow's conventions: help without arguments, plain tracebacks."""
    return typer.Typer(
        help=help_text, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
    )
