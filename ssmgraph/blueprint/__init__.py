"""Blueprints: YAML text → typed, resolved :class:`Blueprint` (see docs/blueprint.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ssmgraph.blueprint.model import Blueprint, Body, InputDecl, ModelView, NodeDecl, Ref, TapDecl
from ssmgraph.blueprint.resolve import Resolver, display_path
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


def blueprint_dirs() -> tuple[Path, ...]:
    """Where shipped blueprints live: inside the wheel, or the repository's blueprints/."""
    package = Path(__file__).resolve().parent.parent
    return tuple(d for d in (package / "blueprints", package.parent / "blueprints") if d.is_dir())


def builtin_blueprints() -> dict[str, Path]:
    """Shipped blueprints by name (``gpt`` for blueprints/gpt.yaml); fragments excluded."""
    found: dict[str, Path] = {}
    for folder in blueprint_dirs():
        for path in sorted(folder.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def find_blueprint(name_or_path: str | Path) -> Path:
    """A file path as given, or the shipped blueprint of that name."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    shipped = builtin_blueprints()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    return path


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
    source: str | Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    text: str | None = None,
) -> Blueprint:
    """Load and resolve a blueprint file (or ``text``, named ``source`` in errors)."""
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
    errors = Collector()
    resolver = Resolver(errors, fragment_dirs=blueprint_dirs())
    blueprint = resolver.blueprint(raw, display, path.parent if text is None else Path.cwd(), overrides or {})
    errors.raise_if_any()
    return blueprint

