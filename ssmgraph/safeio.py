"""Reading JSON files that may be damaged or tampered with: bounded, then checked, errors located.

``json.loads`` alone turns a hostile file into a traceback: ``[[[[...`` 100,000 deep raises
RecursionError, an integer of 100,000 digits ValueError, and ``1e999`` quietly becomes
infinity. :func:`read_json` refuses each (and files too large, not UTF-8, not JSON) with the
caller's :class:`SsmgraphError`, naming the file, what is wrong and what to do;
:func:`check_fields` checks a record's keys and types before anything uses them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from ssmgraph.errors import SsmgraphError

MAX_JSON_BYTES = 64 << 20
MAX_JSON_DEPTH = 100
MAX_INT_DIGITS = 100
FIX = "restore the file, or write it again with the tool that made it"

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_JSON_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object", type(None): "null"}

Kind = type | tuple[type, ...]


class JSONRefused(ValueError):
    """JSON text that is not parsed: invalid, or beyond the limits. The message says why."""


def read_json(
    path: Path,
    *,
    what: str,
    error: type[SsmgraphError],
    fix: str = FIX,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
    finite: bool = True,
    tag_constants: bool = False,
) -> Any:
    """The JSON value in ``path``, or ``error("PATH: WHAT (problem); FIX")``.

    ``what`` opens the message after the path (e.g. "cannot read the run record"); with
    ``finite``, NaN, infinities and numbers that overflow to them (1e999) are refused too,
    except that ``tag_constants`` reads the bare constants ``Infinity``, ``-Infinity`` and
    ``NaN`` as the objects transformers writes for them, ``{"__float__": "Infinity"}``."""
    try:
        text = _read_text(Path(path), max_bytes)
        return parse_json(text, max_depth=max_depth, finite=finite, tag_constants=tag_constants)
    except JSONRefused as exc:
        raise error(f"{path}: {what} ({exc}); {fix}") from None


def _read_text(path: Path, max_bytes: int) -> str:
    if path.is_dir():
        raise JSONRefused("it is a directory, not a file")
    if path.exists() and not path.is_file():
        raise JSONRefused("it is not a regular file")
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise JSONRefused("no such file") from None
    except OSError as exc:
        raise JSONRefused(exc.strerror or str(exc)) from None
    if len(data) > max_bytes:
        raise JSONRefused(f"larger than the limit of {max_bytes} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise JSONRefused(f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}") from None


def parse_json(text: str, *, max_depth: int = MAX_JSON_DEPTH, finite: bool = True, tag_constants: bool = False) -> Any:
    """Parse JSON ``text`` within the limits, or raise :class:`JSONRefused` (``finite``,
    ``tag_constants``: as :func:`read_json`)."""
    if nesting_depth(text, max_depth) > max_depth:
        raise JSONRefused(f"values nested deeper than {max_depth} levels")
    hooks: dict[str, Any] = {"parse_int": _parse_int}
    if finite:
        hooks.update(parse_float=_parse_finite, parse_constant=_tag_constant if tag_constants else _refuse_constant)
    try:
        return json.loads(text, **hooks)
    except json.JSONDecodeError as exc:
        raise JSONRefused(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:  # the pre-scan bounds nesting; this stays as a last guard
        raise JSONRefused("values nested too deeply") from None


def nesting_depth(text: str, limit: int) -> int:
    """How deep the arrays and objects of JSON ``text`` nest (strings skipped), counted
    iteratively and only up to ``limit + 1``: a hostile ``[[[[...`` costs ``limit`` steps."""
    depth = deepest = 0
    for bracket in _NOT_BRACKET.sub("", _STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                break
    return deepest


def _parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise JSONRefused(f"an integer of {len(digits.lstrip('-'))} digits, more than the {MAX_INT_DIGITS} read")
    return int(digits)


def _parse_finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONRefused(f"the number {_short(text)} overflows to infinity")
    return value


def _refuse_constant(name: str) -> float:
    raise JSONRefused(f"{name} is not a finite number")


def _tag_constant(name: str) -> dict[str, str]:
    return {"__float__": name}


# ---- typed records --------------------------------------------------------------------------------
def check_fields(
    record: Any,
    schema: Mapping[str, Kind],
    *,
    source: str | Path,
    error: type[SsmgraphError],
    optional: Collection[str] = (),
    where: str = "",
    fix: str = FIX,
) -> dict[str, Any]:
    """``record`` checked to be an object whose ``schema`` keys hold values of their types (a
    tuple: any of them); keys in ``optional`` may be absent, keys outside the schema are left
    alone. A problem is ``error`` naming ``source`` and the key (``where`` prefixes key names)."""
    if not isinstance(record, dict):
        raise error(f"{source}: {f'key {where!r}: ' if where else ''}expected an object, got {describe(record)}; {fix}")
    missing = [_key(where, k) for k in schema if k not in record and k not in optional]
    if missing:
        raise error(f"{source}: missing key{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)}; {fix}")
    for key, kind in schema.items():
        if key in record and not fits(record[key], kind):
            raise error(f"{source}: key {_key(where, key)!r}: expected {type_name(kind)}, got {describe(record[key])}; {fix}")
    return record


def check_items(
    mapping: Mapping[str, Any], kind: Kind, *, source: str | Path, error: type[SsmgraphError], where: str, fix: str = FIX
) -> None:
    """Every value of ``mapping`` (the object at key ``where``) is a ``kind``."""
    for key, value in mapping.items():
        if not fits(value, kind):
            raise error(f"{source}: key {_key(where, key)!r}: expected {type_name(kind)}, got {describe(value)}; {fix}")


def fits(value: Any, kind: Kind) -> bool:
    """``isinstance`` as JSON means it: a boolean is no integer, an integer is a number."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds and (int in kinds or float in kinds):
        return False
    return isinstance(value, kinds) or (float in kinds and isinstance(value, int))


def type_name(kind: Kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)


def describe(value: Any) -> str:
    """A value for a message: its JSON type and a short rendering."""
    name = next((n for t, n in _JSON_NAMES.items() if type(value) is t), type(value).__name__)
    return name if value is None else f"{name} {_short(repr(value))}"


def _key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."
