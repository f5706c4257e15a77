"""How the command line reports problems: an SsmgraphError (the user's to fix) is printed on
stderr and exits with its code (2), never a traceback; plugin problems are warnings."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from ssmgraph.cli.output import err
from ssmgraph.errors import SsmgraphError
from ssmgraph.registry.plugins import get_registry

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Print an SsmgraphError (the user's to fix) on stderr and exit 2, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SsmgraphError as exc:
            sys.stderr.write(exc.render() + "\n")  # plain: editors parse file:line:col
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def warn_plugin_problems() -> None:
    """Name the plugins that failed to load (and the registry's notices) before a command uses blocks."""
    for problem in get_registry().problems:
        err.print(f"warning: {problem} (`ssmgraph plugins` shows details)", markup=False, highlight=False)
    for notice in get_registry().notices:
        err.print(f"warning: {notice}", markup=False, highlight=False)
