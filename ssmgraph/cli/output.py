"""What commands print: results on stdout (tables, or JSON with ``--json``), messages on stderr.

Every listing (blocks, tasks, plugins, merge methods, conformance checks) and every parameter
table (``blocks NAME``, ``tasks NAME``) is drawn by the functions here, so they look alike.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from rich.console import Console
from rich.table import Table

from ssmgraph.registry.specs import Param

err = Console(stderr=True)


def stdout() -> Console:
    """A console for tables: the terminal's width, or wide enough not to wrap when piped."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def progress() -> AbstractContextManager[None]:
    """Long jobs inside report their phases on stderr: rich bars on a terminal, else one plain line
    per phase and every few seconds (a log, a pipe) — :mod:`ssmgraph.progress`."""
    from ssmgraph.progress import reporting

    return reporting("rich" if err.is_terminal else "lines", err.file)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def listing(columns: Sequence[str], rows: Iterable[Sequence[str]], *, title: str | None = None, fold: bool = False) -> Table:
    """A table of named things, the name in the first column (highlighted); ``fold`` wraps long
    cells instead of cutting them short."""
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, style="cyan" if i == 0 else None, overflow="fold" if fold else "ellipsis")
    for row in rows:
        table.add_row(*row)
    return table


def grid(columns: Sequence[str], rows: Iterable[Sequence[str]], *, title: str) -> Table:
    """A plain table of results (merge tables, CKA between layers)."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


def params_table(params: Iterable[Param], *, key: str, title: str | None = None) -> Table:
    """One row per parameter (of a block or a task): type, default ("required" if none), range, description."""
    rows = []
    for param in (p.to_json() for p in params):
        default = "required" if param["required"] else json.dumps(param["default"])
        rows.append((param["name"], param["type"], default, param["range"] or "", param["doc"]))
    return listing((key, "type", "default", "range", "description"), rows, title=title)


def inline_params(params: Iterable[Param]) -> str:
    """Parameters in one cell: ``name=default``, or the bare name of a required one."""
    return ", ".join(p.name if p.required else f"{p.name}={p.default}" for p in params)
