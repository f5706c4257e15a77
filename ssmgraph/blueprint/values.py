"""The resolver's base: where a value sits (:class:`Where`), reporting a problem there, and
checking and evaluating marked values (``$`` expressions, ``params``) in a parameter scope."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ssmgraph.blueprint.expr import ExprError, evaluate, is_expression, unescape
from ssmgraph.blueprint.names import IDENT, name_problem
from ssmgraph.blueprint.yamlsafe import LDict, LList
from ssmgraph.errors import Collector, Mark, did_you_mean

BAD = object()
"""The value of something that already produced an error."""


@dataclass(frozen=True)
class Where:
    """Where the value being resolved sits: its key path (``nodes.blocks.at.3``, named in
    errors), its mark, the parameters its expressions see, and the folder its ``use:`` paths
    start from."""

    path: str
    mark: Mark | None
    scope: Mapping[str, Any]
    base_dir: Path

    def key(self, key: Any, mark: Mark | None) -> Where:
        """The place of ``key`` inside this mapping (``nodes.mix`` → ``nodes.mix.args``)."""
        return replace(self, path=f"{self.path}.{key}" if self.path else str(key), mark=mark)

    def item(self, index: int, mark: Mark | None) -> Where:
        """The place of item ``index`` inside this list."""
        return replace(self, path=f"{self.path}[{index}]", mark=mark)


@dataclass(frozen=True)
class Evaluated:
    """A value already evaluated in the scope that wrote it (fragment args, ``at:`` overrides).

    A fragment evaluates it again in its own scope; unwrapped as is, ``$$price`` stays the
    string ``$price`` there instead of becoming an expression over the fragment's params."""

    value: Any


@dataclass(frozen=True)
class MergedArgs:
    """A node's ``args`` with an ``at:`` override's (evaluated) args on top.

    ``base`` may be an expression (``args: $mixer_args``), so the merge waits for its value."""

    base: Any
    extra: Mapping[str, Any]


class ValueResolver:
    """Reports problems at their marks and evaluates values; the other resolver parts build on it."""

    def __init__(self, errors: Collector):
        self.errors = errors
        self.via: tuple[Mark, ...] = ()
        """The ``use:`` marks of the fragments being resolved, outermost first."""

    def located(self, mark: Mark | None) -> Mark | None:
        """``mark`` with the fragment uses it is reached through (printed as "used from")."""
        if mark is None or not self.via:
            return mark
        return replace(mark, via=self.via)

    def report(self, code: str, message: str, mark: Mark | None, path: str, help: str = "") -> None:
        self.errors.add(code, message, self.located(mark), path, help)

    def check_keys(self, raw: LDict, allowed: tuple[str, ...], path: str, what: str) -> None:
        for key in raw:
            if key not in allowed:
                self.report(
                    "E110",
                    f"unknown key {key!r} in {what}",
                    raw.key_mark(key),
                    f"{path}.{key}" if path else str(key),
                    did_you_mean(str(key), allowed),
                )

    def check_name(self, name: Any, mark: Mark | None, path: str) -> bool:
        problem = name_problem(name)
        if problem is not None:
            self.report("E200", problem[0], mark, path, problem[1])
        return problem is None

    def expect_map(self, value: Any, mark: Mark | None, path: str, what: str) -> LDict | None:
        if value is None:
            return LDict(mark=mark)
        if isinstance(value, LDict):
            return value
        if isinstance(value, dict):
            return LDict(value, mark=mark)
        self.report("E112", f"{what} must be a mapping, got {kind_of(value)}", mark, path)
        return None

    def string_keys(self, table: Mapping[Any, Any], path: str, what: str) -> bool:
        """Report keys that are not strings (``{1: 2}``); True when there are none."""
        bad = [key for key in table if not isinstance(key, str)]
        for key in bad:
            mark = table.key_mark(key) if isinstance(table, LDict) else None
            self.report(
                "E112",
                f"{what} name must be a string, got {kind_of(key)}",
                mark,
                f"{path}.{key}",
                "names are identifiers such as dim or heads",
            )
        return not bad

    def value(self, raw: Any, where: Where) -> Any:
        """``raw`` with every expression inside it evaluated (keeping marks); BAD after an error."""
        if isinstance(raw, Evaluated):
            return raw.value
        if isinstance(raw, MergedArgs):
            base = self.value(raw.base, where)
            if base is None:
                base = LDict(mark=where.mark)
            if not isinstance(base, dict):
                return base  # not a mapping: the node reports it
            return merge_marked(base, raw.extra)
        if is_expression(raw):
            try:
                return evaluate(raw, where.scope)
            except ExprError as exc:
                code = "E121" if exc.unknown else "E120"
                help = (
                    did_you_mean(exc.unknown, where.scope)
                    if exc.unknown
                    else "expressions use +, -, *, /, //, %, **, min(), max() over params"
                )
                self.report(code, f"in expression {raw!r}: {exc}", where.mark, where.path, help)
                return BAD
        if isinstance(raw, LDict):
            out = LDict(mark=raw.mark)
            out.key_marks = dict(raw.key_marks)
            out.value_marks = dict(raw.value_marks)
            for k, v in raw.items():
                out[k] = self.value(v, where.key(k, raw.mark_of(k)))
            return out
        if isinstance(raw, LList):
            out_list = LList(mark=raw.mark)
            for i, v in enumerate(raw):
                out_list.append(self.value(v, where.item(i, raw.mark_of(i))))
            out_list.item_marks = list(raw.item_marks)
            return out_list
        if isinstance(raw, dict):
            return {k: self.value(v, where.key(k, where.mark)) for k, v in raw.items()}
        if isinstance(raw, list):
            return [self.value(v, where.item(i, where.mark)) for i, v in enumerate(raw)]
        return unescape(raw)

    def typed(self, raw: LDict, key: str, types: tuple[type, ...], where: Where, what: str) -> Any:
        """``raw[key]`` evaluated and checked to be one of ``types``; BAD (and reported) if not."""
        value = self.value(raw[key], where.key(key, raw.mark_of(key)))
        if value is BAD:
            return BAD
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            self.report("E112", f"{what} must be {names}, got {kind_of(value)}", raw.mark_of(key), f"{where.path}.{key}")
            return BAD
        return value

    def params(self, raw: Any, where: Where, overrides: Mapping[str, Any], origin: str) -> dict[str, Any]:
        """The scope ``params`` defines, with ``overrides`` (from ``origin``: ``--set`` or a
        fragment's args) in place of the defaults; each value sees the ones above it."""
        params = self.expect_map(raw, where.mark, where.path, "params") or LDict()
        for name in overrides:
            if name not in params:
                self.report(
                    "E121",
                    f"no parameter {name!r} to override ({origin})",
                    where.mark,
                    where.path,
                    did_you_mean(name, params) or "this file defines no params",
                )
        scope: dict[str, Any] = {}
        in_scope = replace(where, scope=scope)  # filled as we go
        for name, value in params.items():
            if not isinstance(name, str) or not IDENT.match(name):
                self.report("E200", f"parameter name {name!r} is not an identifier", params.key_mark(name), where.path)
                continue
            if name in overrides and origin == "--set" and not fits_default(value, overrides[name]):
                wanted = "true or false" if isinstance(value, bool) else "a number"
                self.report(
                    "E112",
                    f"--set {name}={overrides[name]!r} does not fit the parameter, whose default is {value!r}",
                    params.mark_of(name),
                    f"{where.path}.{name}",
                    f"give {wanted}, e.g. --set {name}={str(value).lower() if isinstance(value, bool) else value}",
                )  # the default stands in, so that this one mistake is the one reported
            elif name in overrides:
                value = overrides[name]
            scope[name] = self.value(value, in_scope.key(name, params.mark_of(name)))
        return scope


def fits_default(default: Any, value: Any) -> bool:
    """Whether a ``--set`` value may replace a literal default: numbers for numbers, booleans for
    booleans, null for anything (a block's own default); an expression, or a default that is
    one, is checked where it is used."""
    if value is None or (isinstance(value, str) and is_expression(value)):
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


def merge_marked(*tables: Mapping[Any, Any]) -> LDict:
    """The tables merged left to right, keeping the marks of the ones that have them."""
    out = LDict(mark=next((t.mark for t in tables if isinstance(t, LDict)), None))
    for table in tables:
        for key, value in table.items():
            out[key] = value
            out.key_marks.pop(key, None)
            out.value_marks.pop(key, None)
            if isinstance(table, LDict):
                out.key_marks[key] = table.key_mark(key)
                out.value_marks[key] = table.mark_of(key)
    return out


def kind_of(value: Any) -> str:
    """How errors describe a value of the wrong kind: ``null``, ``a mapping``, ``int 3``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"
