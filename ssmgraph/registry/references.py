"""Implementations named by reference, ``"package.module:function"``, imported when first used.

A spec that names its implementation this way costs nothing to register: every command loads
the registry, and only the command that runs the implementation imports it (and what it
needs: training loops, plotting, optimal transport).
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from ssmgraph.registry.records import PluginError

_REFERENCE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def is_reference(value: object) -> bool:
    """Whether ``value`` is a ``"module:attribute"`` string."""
    return isinstance(value, str) and _REFERENCE.match(value) is not None


def resolve(reference: str, owner: str) -> Any:
    """Import ``reference`` (``"package.module:function"``) and return the callable it names;
    ``owner`` (e.g. ``"merge method 'ties' (ssmgraph)"``) is named when that fails."""
    module_name, _, attribute = reference.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise PluginError(
            f"{owner} names its implementation {reference!r}, which cannot be loaded: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(target):
        raise PluginError(f"{owner} names its implementation {reference!r}, which is a {type(target).__name__}, not a function")
    return target
