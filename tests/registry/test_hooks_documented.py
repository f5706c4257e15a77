"""Meta-tests: every hook a plugin may implement is documented and exercised by a test."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pluggy

from ssmgraph.registry import hookspecs

ROOT = Path(__file__).resolve().parents[2]


def _hooks() -> dict[str, object]:
    marker = f"{hookspecs.PROJECT}_spec"
    return {name: fn for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, marker)}


def test_there_are_hooks_to_check():
    assert {"ssmgraph_blocks", "ssmgraph_tasks"} <= set(_hooks())
    assert isinstance(hookspecs.hookimpl, pluggy.HookimplMarker)


def test_every_hook_is_documented_with_its_signature():
    docs = (ROOT / "docs" / "plugins.md").read_text()
    for name, fn in _hooks().items():
        signature = inspect.signature(fn)
        params = ", ".join(signature.parameters)
        returns = signature.return_annotation
        heading = f"### `{name}({params}) -> {returns}`"
        assert heading in docs, f"docs/plugins.md lacks the heading {heading}"
        assert fn.__doc__, f"hookspec {name} has no docstring"


def test_every_hook_is_exercised_by_a_test():
    tests = [p for p in (ROOT / "tests").rglob("test_*.py") if p.name != Path(__file__).name]
    text = "\n".join(p.read_text() for p in tests)
    for name in _hooks():
        assert re.search(rf"def {name}\(", text), f"no test implements the hook {name}"
