"""Checks of recipe values, each reporting located errors: a mapping against its parameters,
numbers that must be finite, model names that become folder names."""

from __future__ import annotations

import math
from typing import Any

from ssmgraph.blueprint.yamlsafe import LDict, LList
from ssmgraph.errors import Collector, Mark, did_you_mean
from ssmgraph.registry.params import Param

MAX_NAME_BYTES = 100
"""Model names become folder names (``models/<name>/``): well under file systems' 255-byte limit."""
WINDOWS_DEVICES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"{port}{i}" for port in ("COM", "LPT") for i in range(1, 10))})
"""Names Windows refuses as folder names, in any case."""


def mark_of(node: Any, key: str | None = None) -> Mark | None:
    if key is not None and isinstance(node, LDict) and key in node:
        return node.mark_of(key)
    return getattr(node, "mark", None)


def key_mark_of(node: Any, key: str) -> Mark | None:
    return node.key_mark(key) if isinstance(node, LDict) and key in node else mark_of(node)


def check_mapping(
    errors: Collector, raw: Any, schema: tuple[Param, ...], path: str, what: str, where: Mark | None
) -> dict[str, Any]:
    """Values of ``raw`` checked against ``schema`` (defaults filled); problems go to ``errors``.

    ``where`` locates problems of ``raw`` as a whole when it has no mark (absent, or a scalar)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.add("E112", f"{path} must be a mapping", mark_of(raw) or where, path)
        return {p.name: p.default for p in schema if not p.required}
    values = {p.name: p.default for p in schema if not p.required}
    names = [p.name for p in schema]
    for key, value in raw.items():
        param = next((p for p in schema if p.name == key), None)
        if param is None:
            help_ = did_you_mean(str(key), names) if names else f"{what} takes no parameters"
            errors.add("E110", f"{what} has no parameter {key!r}", key_mark_of(raw, key), f"{path}.{key}", help_)
            continue
        checked, problem = param.check(value)
        if problem:
            errors.add("E112", problem, mark_of(raw, key), f"{path}.{key}", param.doc)
            continue
        values[key] = checked
    for param in schema:
        if param.required and param.name not in raw:
            errors.add("E111", f"{path} needs {param.name!r} ({param.doc})", mark_of(raw) or where, path)
    return values


def check_finite(errors: Collector, value: Any, path: str, mark: Mark | None) -> None:
    """Every number in the recipe is finite: an inf or NaN weight or option would only show up as a model of NaNs."""
    if isinstance(value, float) and not math.isfinite(value):
        errors.add(
            "E112",
            f"{value!r} is not a finite number",
            mark,
            path,
            "recipe numbers must be finite (.inf, .nan and 1e999 are not)",
        )
    elif isinstance(value, dict):
        for key, item in value.items():
            check_finite(errors, item, f"{path}.{key}" if path else str(key), mark_of(value, key) or mark)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_finite(errors, item, f"{path}[{i}]", value.mark_of(i) if isinstance(value, LList) else mark)


def check_folder_name(errors: Collector, name: str, earlier: list[str], mark: Mark | None, path: str) -> None:
    """Methods that return their source models write them to ``models/<name>/``: the name must make a folder."""
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        errors.add(
            "E200",
            f"model name {name[:24]!r}... is too long ({size} bytes): model names become folder names (models/<name>/)",
            mark,
            path,
            f"use a name of at most {MAX_NAME_BYTES} characters (fewer if they are not ASCII)",
        )
    if name.upper() in WINDOWS_DEVICES:
        errors.add(
            "E200",
            f"model name {name!r} is a device name on Windows, not a folder name",
            mark,
            path,
            f"rename it, e.g. {name}_model",
        )
    twin = next((other for other in earlier if other != name and other.casefold() == name.casefold()), None)
    if twin is not None:
        errors.add(
            "E200",
            f"model names {twin!r} and {name!r} differ only in case",
            mark,
            path,
            "their folders models/<name>/ would be one folder on macOS and Windows; rename one",
        )
