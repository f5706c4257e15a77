"""What may name a parameter, an input, a node, an output or a tap (else error E200).

Node and input names become attributes of the compiled model and names in its generated
``forward``, so besides being identifiers they must not shadow what a module already has.
"""

from __future__ import annotations

import keyword
import re
from typing import Any

from torch import nn

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
"""Output and tap names: identifiers joined by dots (``transformer.logits``)."""

MODULE_ATTRS = frozenset(n for n in dir(nn.Module) if not n.startswith("__"))
"""What a submodule name must not shadow on any ``nn.Module`` (a tap's projection lives in ``taps``)."""

RESERVED = (
    frozenset(
        {
            "taps",
            "forward",
            "forward_with_state",
            "step",
            "init_state",
            "generate",
            "training",
            "state_dict",
            "blueprint",
            "view",
            "input_types",
            "outputs",
            "tap_sources",
            "tap_names",
            "nodes",
            "order",
            "tied",
            "generated_source",
            "supports_step",
            "self",
        }
    )
    | MODULE_ATTRS
)
"""Node and input names that would shadow the compiled model's own members, or the ``self`` of
the generated forward."""


def submodule_name_ok(name: str) -> bool:
    """Whether ``name`` can name a submodule: an identifier, not a keyword, no ``_`` in front,
    not an ``nn.Module`` member (taps and the names merges give models' layers)."""
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_") and name not in MODULE_ATTRS


def name_problem(name: Any) -> tuple[str, str] | None:
    """Why ``name`` cannot name an input or a node, as (message, help); None when it can."""
    if not isinstance(name, str) or not IDENT.match(name) or keyword.iskeyword(name):
        return f"name {name!r} is not an identifier (letters, digits and _, not starting with a digit)", ""
    if name in RESERVED:
        return f"name {name!r} is reserved (it would shadow a module attribute)", f"rename it, e.g. {name}_"
    if name.startswith("_"):  # private members of the module
        return (
            f"name {name!r} starts with '_', which is reserved for module internals",
            f"rename it, e.g. {name.lstrip('_') or 'x'}",
        )
    return None
