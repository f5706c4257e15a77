"""Property tests of the blueprint layer: the strict YAML loader and the resolver on text
hypothesis makes up (loads or raises a located BlueprintError), dump_yaml round trips, and the
expression evaluator against Python's own arithmetic."""

from __future__ import annotations

import math
import operator
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssmgraph.blueprint import load_blueprint
from ssmgraph.blueprint.expr import ExprError, evaluate
from ssmgraph.blueprint.yamlsafe import dump_yaml, load_yaml, plain
from ssmgraph.errors import BlueprintError

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- the strict loader -----------------------------------------------------------------------

YAML_PIECES = st.sampled_from(
    [
        "a",
        "key",
        ":",
        ": ",
        "-",
        "- ",
        "[",
        "]",
        "{",
        "}",
        ",",
        "&x ",
        "*x",
        "!!python/name:os.system ",
        "!t ",
        "\n",
        "\n  ",
        "  ",
        "\t",
        "'",
        '"',
        "#",
        "|",
        ">",
        "?",
        "~",
        "1e3",
        "0x1F",
        "0o17",
        "010",
        ".inf",
        "-.nan",
        "99999999999999999999999",
        "true",
        "no",
        "null",
        "$d * 4",
        "${d}",
        "%YAML 1.2\n",
        "---\n",
        "...\n",
        "\\",
        "\x00",
        "\ufeff",
    ]
)


@FAST
@given(st.one_of(st.text(max_size=200), st.lists(YAML_PIECES, max_size=40).map("".join)))
def test_loader_loads_or_raises_blueprint_error(text: str) -> None:
    try:
        load_yaml(text, "fuzz.yaml")
    except BlueprintError as error:
        for d in error.diagnostics:
            assert d.mark is not None and d.mark.file == "fuzz.yaml"


@FAST
@given(st.one_of(st.text(max_size=200), st.lists(YAML_PIECES, max_size=40).map("".join)))
def test_resolver_loads_or_raises_blueprint_error(text: str) -> None:
    try:
        load_blueprint("fuzz.yaml", text=text)
    except BlueprintError:
        pass


# U+0085 (NEL) is left to test_dump_yaml_round_trips_unicode_line_breaks, so that this
# property keeps looking for other problems.
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x85"), max_size=20)
PLAIN_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63) + 1, 2**63 - 1),
    st.floats(allow_nan=False),
    TEXT,
    st.sampled_from(
        [
            "1e3",
            "0o17",
            "010",
            "0x1F",
            "yes",
            "no",
            "on",
            "~",
            "null",
            "True",
            ".inf",
            "-",
            "$d",
            "$$d",
            "",
            " x ",
            "a: b",
            "- x",
            "#",
        ]
    ),
)
PLAIN_KEYS = st.one_of(TEXT, st.integers(-1000, 1000))
PLAIN = st.recursive(
    PLAIN_SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(PLAIN_KEYS, children, max_size=4)),
    max_leaves=25,
)


@FAST
@given(PLAIN, st.booleans(), st.booleans())
def test_documents_dumped_by_pyyaml_load_or_raise_blueprint_error(value: Any, flow: bool, canonical: bool) -> None:
    """Plain data written by PyYAML itself (YAML 1.1 quoting, flow or block, canonical tags).

    Values may differ (PyYAML leaves ``0E0`` unquoted, which YAML 1.2 reads as a float), but
    the loader must never fail with anything but a located BlueprintError."""
    text = yaml.safe_dump(value, default_flow_style=flow, canonical=canonical, allow_unicode=True)
    try:
        load_yaml(text, "pyyaml.yaml")
    except BlueprintError as error:
        assert all(d.mark is not None for d in error.diagnostics)


@FAST
@given(PLAIN)
def test_dump_yaml_round_trips_through_load_yaml(value: Any) -> None:
    text = dump_yaml(value)
    assert plain(load_yaml(text, "dumped.yaml")) == value, text


@pytest.mark.parametrize("text", ["\x85", "a\x85b", "\u2028", "x\u2029y", "\r\n", "tab\there", "\ufeffbom"])
def test_dump_yaml_round_trips_unicode_line_breaks(text: str) -> None:
    """A blueprint's doc string with NEL (U+0085) must survive save(): dump_yaml promises equal values."""
    for value in ({"doc": text}, {text: 1}, [text]):
        assert plain(load_yaml(dump_yaml(value), "dumped.yaml")) == value, dump_yaml(value)


# ---- expressions -----------------------------------------------------------------------------

BOUND = 2**63


class _Unbounded(Exception):
    pass


@st.composite
def arithmetic(draw: st.DrawFn, depth: int = 0) -> str:
    if depth >= 4 or draw(st.integers(0, 2)) == 0:
        return draw(st.one_of(st.integers(0, 1000).map(str), st.sampled_from(["a", "b", "c"])))
    kind = draw(st.sampled_from(["bin", "bin", "bin", "neg", "pow", "call"]))
    if kind == "neg":
        return f"-({draw(arithmetic(depth + 1))})"
    if kind == "pow":
        return f"({draw(arithmetic(depth + 1))}) ** {draw(st.integers(0, 5))}"
    if kind == "call":
        fn = draw(st.sampled_from(["min", "max", "abs"]))
        args = [draw(arithmetic(depth + 1)) for _ in range(1 if fn == "abs" else 2)]
        return f"{fn}({', '.join(args)})"
    op = draw(st.sampled_from(["+", "-", "*", "//", "%"]))
    return f"({draw(arithmetic(depth + 1))}) {op} ({draw(arithmetic(depth + 1))})"


def _python_value(source: str, scope: dict[str, int]) -> Any:
    """Python's own result, computed node by node; _Unbounded when any value leaves int64."""
    import ast

    ops = {
        ast.Add: operator.add,
        ast.Sub: operator.sub,
        ast.Mult: operator.mul,
        ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv,
        ast.Mod: operator.mod,
        ast.Pow: operator.pow,
    }

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            value = node.value
        elif isinstance(node, ast.Name):
            value = scope[node.id]
        elif isinstance(node, ast.UnaryOp):
            value = -walk(node.operand)
        elif isinstance(node, ast.Call):
            value = {"min": min, "max": max, "abs": abs}[node.func.id](*(walk(a) for a in node.args))  # type: ignore[attr-defined]
        else:
            assert isinstance(node, ast.BinOp)
            value = ops[type(node.op)](walk(node.left), walk(node.right))
        if (
            isinstance(value, int)
            and abs(value) >= BOUND
            or isinstance(value, float)
            and (not math.isfinite(value) or abs(value) > 1e300)
        ):
            raise _Unbounded
        return value

    return walk(ast.parse(source, mode="eval").body)


@FAST
@given(arithmetic(), st.integers(-50, 50), st.integers(-50, 50), st.integers(0, 9))
def test_arithmetic_matches_python(source: str, a: int, b: int, c: int) -> None:
    scope = {"a": a, "b": b, "c": c}
    try:
        expected = _python_value(source, scope)
    except ZeroDivisionError:
        with pytest.raises(ExprError, match="division by zero"):
            evaluate("$" + source, scope)
        return
    except (_Unbounded, OverflowError):
        try:
            evaluate("$" + source, scope)
        except ExprError:
            pass
        return
    got = evaluate("$" + source, scope)
    assert got == expected and type(got) is type(expected), (source, scope)
    assert evaluate("${a} * 0 + (" + source.replace("a", "${a}") + ")", scope) == expected


@FAST
@given(
    st.one_of(
        st.text(max_size=120),
        st.lists(
            st.sampled_from(
                list("0123456789abcd+-*/%()., ")
                + [
                    "**",
                    "//",
                    "==",
                    "<",
                    " if ",
                    " else ",
                    " and ",
                    " not ",
                    "min",
                    "max",
                    "log2",
                    "sqrt",
                    "__import__",
                    ".__class__",
                    "[0]",
                    "lambda:",
                    "'s'",
                    "1e308",
                    "9" * 30,
                ]
            ),
            max_size=60,
        ).map("".join),
    )
)
def test_expressions_raise_only_expr_error(body: str) -> None:
    try:
        evaluate("$" + body, {"a": 3, "b": -2, "c": 0, "d": 2.5})
    except ExprError:
        pass


def test_evaluator_refuses_huge_powers_quickly() -> None:
    import time

    for source in ("$2**10**10", "$10**10**10**10", "$(2**62)*(2**62)", "$9**9**9", "$max(2**63, 1)", "$2.0**100000"):
        start = time.perf_counter()
        with pytest.raises(ExprError):
            evaluate(source, {})
        assert time.perf_counter() - start < 0.5, source


def test_float_powers_are_bounded_like_float_products() -> None:
    """``7776.0 ** 5`` (2.8e19) is a finite float like ``7776.0 * 7776.0 * ...``; only results
    beyond 1e300 are refused for floats, so a float power must not be held to the int64 limit."""
    product = evaluate("$7776.0 * 7776.0 * 7776.0 * 7776.0 * 7776.0", {})
    assert evaluate("$7776.0 ** 5", {}) == product == 7776.0**5
