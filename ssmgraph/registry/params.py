"""Parameters of blocks, tasks and merge methods: a typed, documented schema that values from
blueprints, task options and recipes are checked against before any plugin code runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

_MISSING: Any = object()
REQUIRED: Any = _MISSING
"""Default of a parameter the blueprint must give."""

ParamType = type | tuple[type, ...]


@dataclass(frozen=True)
class Param:
    """One block parameter: its type, default, one-line doc, and allowed values."""

    name: str
    type: ParamType
    default: Any = REQUIRED
    doc: str = ""
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    path: bool = False
    """The value names a file or folder: a relative one in a merge recipe starts from the recipe's folder."""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def type_name(self) -> str:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        name = " | ".join(t.__name__ for t in types)
        return f"{name} | null" if self.nullable else name

    def check(self, value: Any) -> tuple[Any, str | None]:
        """Return ``(coerced value, None)`` or ``(value, problem)`` for a user-given value."""
        if value is None:
            return (None, None) if self.nullable else (value, f"expected {self.type_name}, got null")
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in types:
            return value, f"expected {self.type_name}, got a boolean ({value!r})"
        if not isinstance(value, types):
            return value, f"expected {self.type_name}, got {type(value).__name__} {value!r}"
        if isinstance(value, float) and not math.isfinite(value):
            return value, f"{value!r} is not a finite number"
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            return value, f"{value!r} is not one of {allowed}"
        if self.min is not None and isinstance(value, (int, float)) and value < self.min:
            return value, f"{value!r} is below the minimum {self.min:g}"
        if self.max is not None and isinstance(value, (int, float)) and value > self.max:
            return value, f"{value!r} is above the maximum {self.max:g}"
        return value, None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type_name,
            "required": self.required,
            "default": None if self.required else self.default,
            "doc": self.doc,
            "range": self.describe_range() or None,
        }

    def describe_range(self) -> str:
        if self.choices is not None:
            return " | ".join(repr(c) for c in self.choices)
        if self.min is None and self.max is None:
            return ""
        lo = "-inf" if self.min is None else f"{self.min:g}"
        hi = "inf" if self.max is None else f"{self.max:g}"
        return f"[{lo}, {hi}]"


def param_problems(params: Any) -> list[str]:
    """What is wrong with a record's ``params``: a tuple or list of documented, uniquely
    named :class:`Param` records."""
    if not isinstance(params, (tuple, list)):
        return [f"params must be a tuple of Param records, got {type(params).__name__}"]
    problems, seen = [], set()
    for p in params:
        if not isinstance(p, Param):
            problems.append(f"params holds {p!r}, not a Param")
            continue
        if p.name in seen:
            problems.append(f"parameter {p.name!r} is declared twice")
        seen.add(p.name)
        if not p.doc:
            problems.append(f"parameter {p.name!r} has no doc")
    return problems
