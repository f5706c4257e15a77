"""Safe expressions over blueprint parameters: ``$d_model * 4``, ``${d} // heads``.

A string value that starts with ``$`` is an expression. It is parsed with :mod:`ast` and
evaluated by walking a whitelist of node types: numbers, strings, booleans, parameter
names, arithmetic, comparisons, ``and``/``or``/``not``, ``x if c else y`` and a handful of
functions. Nothing is ever passed to ``eval``; attribute access, subscripts and
comprehensions are refused, and results are bounded so ``2 ** 10 ** 10`` cannot hang.
``$$`` at the start escapes a literal dollar sign.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Mapping
from typing import Any

MAX_INT = 2**63
MAX_EXPR_CHARS = 500


class ExprError(ValueError):
    """A user error in an expression; ``unknown`` names an undefined parameter, if any."""

    def __init__(self, message: str, unknown: str | None = None):
        super().__init__(message)
        self.unknown = unknown


_FUNCS = {
    "min": min,
    "max": max,
    "abs": abs,
    "int": int,
    "float": float,
    "round": round,
    "ceil": math.ceil,
    "floor": math.floor,
    "log2": math.log2,
    "sqrt": math.sqrt,
}
_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMPOPS = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_BRACED = re.compile(r"\$\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}")
_DOLLAR_NAME = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def is_expression(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("$") and not value.startswith("$$")


def unescape(value: Any) -> Any:
    return value[1:] if isinstance(value, str) and value.startswith("$$") else value


def escape(value: Any) -> Any:
    """The inverse of :func:`unescape`: a string that starts with ``$`` reads back as itself."""
    return "$" + value if isinstance(value, str) and value.startswith("$") else value


def to_python_syntax(text: str) -> str:
    """``$d * 4`` and ``${d} * 4`` become ``d * 4``."""
    body = text[1:] if text.startswith("$") and not text.startswith("${") else text
    body = _BRACED.sub(r"\1", body)
    return _DOLLAR_NAME.sub(r"\1", body)


def evaluate(text: str, scope: Mapping[str, Any]) -> Any:
    """Evaluate the expression ``text`` (with its leading ``$``) against ``scope``."""
    if len(text) > MAX_EXPR_CHARS:
        raise ExprError(f"expression is longer than {MAX_EXPR_CHARS} characters")
    source = to_python_syntax(text).strip()
    if not source:
        raise ExprError("empty expression after '$'")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"cannot parse {source!r}: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise ExprError("expression nests too deeply") from None
    try:
        return _Evaluator(scope).visit(tree.body)
    except RecursionError:
        raise ExprError("expression nests too deeply") from None


class _Evaluator:
    def __init__(self, scope: Mapping[str, Any]):
        self.scope = scope

    def visit(self, node: ast.AST) -> Any:
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is None:
            raise ExprError(f"{type(node).__name__.lower()} is not allowed in expressions")
        return _bounded(method(node))

    def visit_Constant(self, node: ast.Constant) -> Any:
        if not isinstance(node.value, (int, float, str, bool, type(None))):
            raise ExprError(f"constant {node.value!r} is not allowed")
        return node.value

    def visit_Name(self, node: ast.Name) -> Any:
        if node.id in self.scope:
            return self.scope[node.id]
        if node.id in ("true", "false"):
            return node.id == "true"
        raise ExprError(f"unknown parameter {node.id!r}", unknown=node.id)

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise ExprError(f"operator {type(node.op).__name__} is not allowed")
        left, right = self.visit(node.left), self.visit(node.right)
        if isinstance(left, str) or isinstance(right, str):
            if op is not operator.add or not (isinstance(left, str) and isinstance(right, str)):
                raise ExprError("strings can only be joined with + to other strings")
            if len(left) + len(right) > MAX_EXPR_CHARS * 4:
                raise ExprError("string result is too long")
        elif not (_is_number(left) and _is_number(right)):
            raise ExprError(f"arithmetic takes numbers, got {_what(left)} and {_what(right)}")
        if op is operator.pow:
            _check_power(left, right)
        try:
            return op(left, right)
        except ZeroDivisionError:
            raise ExprError("division by zero") from None
        except OverflowError:
            raise ExprError("number is too large") from None

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        value = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            return not value
        if isinstance(node.op, (ast.USub, ast.UAdd)) and isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
        raise ExprError("unary operator on a non-number")

    def visit_BoolOp(self, node: ast.BoolOp) -> Any:
        values = (self.visit(v) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)

    def visit_Compare(self, node: ast.Compare) -> Any:
        left = self.visit(node.left)
        for op_node, comparator in zip(node.ops, node.comparators):
            op = _CMPOPS.get(type(op_node))
            if op is None:
                raise ExprError(f"comparison {type(op_node).__name__} is not allowed")
            right = self.visit(comparator)
            try:
                if not op(left, right):
                    return False
            except TypeError as exc:
                raise ExprError(f"cannot compare: {exc}") from None
            left = right
        return True

    def visit_IfExp(self, node: ast.IfExp) -> Any:
        return self.visit(node.body) if self.visit(node.test) else self.visit(node.orelse)

    def visit_Call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS or node.keywords:
            allowed = ", ".join(sorted(_FUNCS))
            raise ExprError(f"only these functions may be called: {allowed}")
        args = [self.visit(a) for a in node.args]
        if any(isinstance(a, (str, list, dict)) for a in args):
            raise ExprError(f"{node.func.id}() takes numbers")
        try:
            return _FUNCS[node.func.id](*args)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ExprError(f"{node.func.id}(): {exc}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))


def _what(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "null" if value is None else type(value).__name__


def _check_power(base: float, exponent: float) -> None:
    """Refuse powers whose result would be huge before computing them (``0.5 ** -1e5`` too)."""
    if base == 0 or abs(base) == 1:
        return
    if isinstance(base, int) and isinstance(exponent, int):
        too_large = exponent > 64 or exponent * math.log2(abs(base)) > 63
    else:
        too_large = exponent * math.log10(abs(base)) > 300
    if too_large:
        raise ExprError(f"{base} ** {exponent} is too large")


def _bounded(value: Any) -> Any:
    if isinstance(value, complex):  # (-8) ** 0.5
        raise ExprError("result is not a real number")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= MAX_INT:
        raise ExprError("integer result does not fit in 64 bits")
    if isinstance(value, float) and math.isfinite(value) and abs(value) > 1e300:
        raise ExprError("number is too large")
    return value
