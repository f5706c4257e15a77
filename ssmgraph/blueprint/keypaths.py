"""Plain Python data → the marked values the YAML reader gives, each marked with its key path.

A blueprint built in Python (:meth:`Blueprint.from_dict`) has no lines and columns; its
errors name the caller's ``source`` label and the key path of the value instead
(``<stitched blueprint>:nodes.mix.args.heads``). What YAML could not hold is refused as
the reader refuses it: values that are not plain data, integers beyond 64 bits, nesting
deeper than the reader allows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ssmgraph.blueprint.yamlsafe import MAX_DEPTH, MAX_VALUES, LDict, LList
from ssmgraph.errors import Collector, Mark

SCALARS = (str, bool, int, float, type(None))


@dataclass(frozen=True)
class KeyMark(Mark):
    """The place of a value in a Python mapping: the caller's label (``file``) and its key path."""

    key: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.key}" if self.key else self.file


def marked(mapping: Mapping[Any, Any], source: str) -> LDict:
    """``mapping`` as marked values (tuples become lists); raises one BlueprintError listing
    every value YAML could not hold."""
    errors = Collector()
    marker = _Marker(source, errors)
    try:
        out = marker.mapping(mapping, "", 0)
    except _TooLarge as refused:
        errors.add("E103", refused.message, marker.mark(refused.path))
    errors.raise_if_any()
    return out


class _TooLarge(Exception):
    """Stops the walk: the mapping is too deep or too large (or holds itself)."""

    def __init__(self, message: str, path: str):
        self.message, self.path = message, path


class _Marker:
    def __init__(self, source: str, errors: Collector):
        self.source = source
        self.errors = errors
        self.count = 0

    def mark(self, path: str) -> KeyMark:
        return KeyMark(self.source, 0, 0, key=path)

    def value(self, value: Any, path: str, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise _TooLarge(f"the mapping holds more than {MAX_VALUES} values", path)
        if depth > MAX_DEPTH:
            raise _TooLarge(f"values are nested deeper than {MAX_DEPTH} levels (a mapping that holds itself?)", path)
        if isinstance(value, Mapping):
            return self.mapping(value, path, depth)
        if isinstance(value, (list, tuple)):
            out = LList(mark=self.mark(path))
            for i, item in enumerate(value):
                out.append(self.value(item, f"{path}[{i}]", depth + 1))
                out.item_marks.append(self.mark(f"{path}[{i}]"))
            return out
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            self.errors.add("E104", f"integer {value} does not fit in 64 bits", self.mark(path))
        elif not isinstance(value, SCALARS):
            self.errors.add(
                "E112",
                f"{repr(value)[:60]} is not plain data",
                self.mark(path),
                help="a blueprint holds mappings, lists, strings, numbers, booleans and None only",
            )
        return plain_scalar(value)

    def mapping(self, value: Mapping[Any, Any], path: str, depth: int) -> LDict:
        out = LDict(mark=self.mark(path))
        for key, item in value.items():
            inner = f"{path}.{key}" if path else str(key)
            if not isinstance(key, SCALARS):
                self.errors.add(
                    "E103", f"mapping key {repr(key)[:60]} is not a string, number, boolean or None", self.mark(inner)
                )
                continue
            key = plain_scalar(key)
            out[key] = self.value(item, inner, depth + 1)
            out.key_marks[key] = out.value_marks[key] = self.mark(inner)
        return out


def plain_scalar(value: Any) -> Any:
    """A subclass of a plain type (``numpy.float64``, an ``IntEnum``) as the plain type itself,
    which the rest of ssmgraph (and the YAML a saved model carries) knows."""
    for base in (int, float, str):
        if isinstance(value, base) and not isinstance(value, bool) and type(value) is not base:
            return base.__str__(value) if base is str else base(value)
    return value
