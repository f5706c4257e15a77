"""Blueprints: YAML text or a Python mapping → typed, resolved :class:`Blueprint` (see docs/blueprint.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ssmgraph.blueprint.document import Blueprint, Body, InputDecl, ModelView, NodeDecl, Ref, TapDecl
from ssmgraph.blueprint.files import blueprint_dirs, builtin_blueprints, display_path, find_blueprint
from ssmgraph.blueprint.resolver import resolve
from ssmgraph.blueprint.yamlsafe import load_file, load_yaml
from ssmgraph.errors import Collector, Mark, did_you_mean

__all__ = [
    "Blueprint",
    "Body",
    "InputDecl",
    "ModelView",
    "NodeDecl",
    "Ref",
    "TapDecl",
    "builtin_blueprints",
    "find_blueprint",
    "load_blueprint",
    "parse_overrides",
]


def parse_overrides(items: Iterable[str], flag: str = "--set") -> dict[str, Any]:
    """``["d=128", "causal=false"]`` → ``{"d": 128, "causal": False}`` (values read as YAML);
    ``flag`` names the option in errors (``-t`` for task options)."""
    errors = Collector()
    out: dict[str, Any] = {}
    example = "-t seq_len=256" if flag == "-t" else f"{flag} d_model=256"
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            errors.add("E112", f"{flag} {item!r} must read name=value", None, flag, f"e.g. {example}")
            continue
        out[name] = load_yaml(text, f"{flag} {name}") if text.strip() else ""
    errors.raise_if_any()
    return out


def load_blueprint(
    source: str | Path | Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    *,
    text: str | None = None,
) -> Blueprint:
    """Load and resolve a blueprint file (or ``text``, named ``source`` in errors), or a
    mapping (see :meth:`Blueprint.from_dict`)."""
    if isinstance(source, Mapping):
        return Blueprint.from_dict(source, overrides=overrides)
    path = find_blueprint(source) if text is None else Path(source)
    display = str(source) if text is not None else display_path(path, blueprint_dirs())
    if text is None and not path.exists() and path.suffix == "" and len(path.parts) == 1:
        errors = Collector()
        shipped = builtin_blueprints()
        errors.add(
            "E100",
            f"no blueprint file or shipped blueprint named {str(source)!r}",
            Mark(display, 1, 1),
            help=did_you_mean(str(source), shipped) if shipped else "give the path of a .yaml file",
        )
        errors.raise_if_any()
    raw = load_yaml(text, display) if text is not None else load_file(path, display)
    return resolve(raw, display, path.parent if text is None else Path.cwd(), overrides or {}, blueprint_dirs())
