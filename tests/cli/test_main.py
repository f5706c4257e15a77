"""The app itself: ``--version`` and ``--help``."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner

import ssmgraph
from ssmgraph.cli import app

WIDE = {"COLUMNS": "200", "NO_COLOR": "1"}


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=WIDE)


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.startswith(f"ssmgraph {ssmgraph.__version__}")


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for command in ("build", "blocks", "plugins"):
        assert command in result.stdout
