"""Helpers for the error-code tests in this folder: bad blueprints written as lists of lines, and the
assertions on the diagnostics they produce.

Blueprints are written as lists of lines (``bp(...)``) so line N of the file is item N-1 of the list;
``with_head(...)`` puts ``HEAD`` (lines 1-6) first, so nodes added by a test start at line 7.
Imported by basename (``from error_helpers import ...``), like tests/registry/fake_plugins.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ssmgraph.blueprint import load_blueprint
from ssmgraph.errors import BlueprintError, Diagnostic
from ssmgraph.graph.compile import compile_blueprint

FILE = "bp.yaml"

# Lines 1-6 of most blueprints in the tests; nodes added by a test start at line 7.
HEAD = [
    "ssmgraph: 1",  # 1
    "params: {d: 16, heads: 4}",  # 2
    "inputs:",  # 3
    "  tokens: {dtype: int64, shape: [batch, seq]}",  # 4
    "nodes:",  # 5
    "  embed: {block: embed.token, in: tokens, args: {vocab: 10, dim: $d}}",  # 6
]


def bp(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def with_head(*lines: str) -> str:
    return bp(*HEAD, *lines)


def diagnostics(text: str, overrides: dict | None = None, *, compile: bool = True, name: str = FILE) -> list[Diagnostic]:
    with pytest.raises(BlueprintError) as info:
        blueprint = load_blueprint(name, overrides, text=text)
        if compile:
            compile_blueprint(blueprint)
    return info.value.diagnostics


def only(text: str, code: str, overrides: dict | None = None, *, name: str = FILE) -> Diagnostic:
    """The single diagnostic ``text`` produces, which must have ``code``."""
    found = diagnostics(text, overrides, name=name)
    rendered = "\n".join(d.render() for d in found)
    assert [d.code for d in found] == [code], rendered
    return found[0]


def check(
    d: Diagnostic, code: str, line: int, col: int, path: str | None, message: str, help: str | None = None, file: str = FILE
) -> None:
    """Code, exact position, node path, and a key part of message and help."""
    assert d.code == code, d.render()
    assert d.mark is not None, d.render()
    assert (d.mark.file, d.mark.line, d.mark.col) == (file, line, col), d.render()
    if path is not None:
        assert d.path == path, d.render()
    assert message in d.message, d.render()
    if help is not None:
        assert help in d.help, d.render()


def file_errors(path: Path) -> list[Diagnostic]:
    with pytest.raises(BlueprintError) as info:
        compile_blueprint(load_blueprint(path))
    return info.value.diagnostics


MIX = "  mix: {{block: mix.attention, in: embed, args: {{heads: {}}}}}"  # line 7; the value at col 56

STACK = [
    "  st:",  # 7
    "    repeat: 2",  # 8
    "    in: embed",  # 9
    "    body:",  # 10
    "      inputs: [x]",  # 11
    "      nodes: {n: {block: norm.layer, in: x}}",  # 12
    "      outputs: {x: n}",  # 13
]
