"""Options that several commands share, declared once so their flags and help read the same."""

from __future__ import annotations

from typing import Annotated

import typer

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a blueprint parameter, e.g. `--set d_model=256` (repeatable)."),
]

TaskOption = Annotated[
    list[str] | None,
    typer.Option(
        "--task-option", "-t", help="Set a task option, e.g. `-t seq_len=256` (repeatable; `ssmgraph tasks NAME` lists them)."
    ),
]
