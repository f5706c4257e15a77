"""Property tests: shape inference against real tensors, mutated blueprints, the strict
loader and the expression evaluator, on inputs hypothesis makes up."""

from __future__ import annotations

import copy
import math
import operator
import string
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssmgraph.blueprint import builtin_blueprints, load_blueprint
from ssmgraph.blueprint.expr import ExprError, evaluate
from ssmgraph.blueprint.yamlsafe import dump_yaml, load_yaml, plain
from ssmgraph.errors import SOURCES, BlueprintError
from ssmgraph.graph.compile import compile_blueprint

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QUICK = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MODELS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BATCH, SEQ, VOCAB = 2, 5, 11
DIMS = (8, 12, 16)

# ---- (a) generated blueprints: inferred shapes = real shapes ------------------------------------


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


@st.composite
def unary_block(draw: st.DrawFn, dim: int) -> tuple[str, dict[str, Any], int]:
    """A dimension-preserving block (or struct.linear) for an input of ``dim`` features."""
    kind = draw(st.sampled_from(["norm.layer", "norm.rms", "ffn.mlp", "ffn.glu", "mix.attention", "mix.lstm", "struct.linear"]))
    args: dict[str, Any] = {}
    out = dim
    if kind == "ffn.mlp":
        args = draw(st.sampled_from([{}, {"hidden": draw(st.integers(1, 24))}, {"activation": "relu"}]))
    elif kind == "ffn.glu":
        args = draw(st.sampled_from([{}, {"hidden": draw(st.integers(1, 24))}, {"multiple_of": 8}]))
    elif kind == "mix.attention":
        args = {"heads": draw(st.sampled_from(_divisors(dim))), "causal": draw(st.booleans())}
    elif kind == "mix.lstm":
        args = draw(st.sampled_from([{}, {"hidden": draw(st.integers(2, 20))}, {"layers": 2}]))
    elif kind == "struct.linear":
        out = draw(st.sampled_from(DIMS))
        args = {"dim": out}
    return kind, args, out


@st.composite
def random_blueprint(draw: st.DrawFn) -> dict[str, Any]:
    """embed.token, then a random DAG of built-in blocks and repeat stacks, then head.lm."""
    d0 = draw(st.sampled_from(DIMS))
    nodes: dict[str, Any] = {"embed": {"block": "embed.token", "in": "tokens", "args": {"vocab": VOCAB, "dim": d0}}}
    values: list[tuple[str, int]] = [("embed", d0)]
    for i in range(draw(st.integers(1, 6))):
        name = f"n{i}"
        kind = draw(st.sampled_from(["unary", "unary", "add", "stack"]))
        source, dim = draw(st.sampled_from(values))
        if kind == "add":
            partner = draw(st.sampled_from([v for v, d in values if d == dim]))
            nodes[name] = {"block": "struct.add", "in": [source, partner]}
        elif kind == "stack":
            body_nodes: dict[str, Any] = {}
            prev = "x"
            for j in range(draw(st.integers(1, 2))):
                block, args, _ = draw(unary_block(dim).filter(lambda b: b[0] != "struct.linear"))
                body_nodes[f"b{j}"] = {"block": block, "in": prev, **({"args": args} if args else {})}
                prev = f"b{j}"
            body_nodes["out"] = {"block": "struct.add", "in": ["x", prev]}
            nodes[name] = {
                "repeat": draw(st.integers(1, 3)),
                "in": source,
                "carry": "x",
                "body": {"inputs": ["x"], "nodes": body_nodes, "outputs": {"x": "out"}},
            }
        else:
            block, args, dim = draw(unary_block(dim))
            nodes[name] = {"block": block, "in": source, **({"args": args} if args else {})}
        values.append((name, dim))
    last, _ = values[-1]
    nodes["head"] = {"block": "head.lm", "in": last, "args": {"vocab": VOCAB}}
    # every value is an output, so every node is built and checked
    outputs = {"logits": "head", **{f"v_{name}": name for name, _ in values}}
    return {
        "ssmgraph": 1,
        "name": "random",
        "inputs": {"tokens": {"dtype": "int64", "shape": ["batch", "seq"]}},
        "nodes": nodes,
        "outputs": outputs,
    }


def _concrete(shape: tuple[Any, ...]) -> tuple[int, ...]:
    return tuple({"batch": BATCH, "seq": SEQ}.get(d, d) if isinstance(d, str) else d for d in shape)


def check_shapes(doc: dict[str, Any]) -> None:
    text = dump_yaml(doc)
    model = compile_blueprint(load_blueprint("random.yaml", text=text))
    assert set(model.nodes) >= {"embed", "head"}
    seen: dict[str, tuple[int, ...]] = {}
    handles = []
    for path, info in model.nodes.items():
        module = model.get_submodule(info.module_path)

        def hook(_m: Any, _i: Any, out: Any, path: str = path) -> None:
            seen[path] = tuple(out.shape)

        handles.append(module.register_forward_hook(hook))
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        result = model(tokens)
    for h in handles:
        h.remove()
    assert set(seen) == set(model.nodes), "every node ran exactly at its module"
    for path, info in model.nodes.items():
        assert seen[path] == _concrete(info.out_type.shape), (path, info.out_type, text)
    assert isinstance(result, dict) and tuple(result["logits"].shape) == (BATCH, SEQ, VOCAB)
    for name, value in model.outputs.items():
        assert tuple(result[name].shape) == _concrete(model.nodes[value].out_type.shape)


@QUICK
@given(random_blueprint())
def test_inferred_shapes_match_a_real_forward_pass(doc: dict[str, Any]) -> None:
    check_shapes(doc)


@pytest.mark.slow
@MODELS
@given(random_blueprint())
def test_inferred_shapes_match_a_real_forward_pass_many(doc: dict[str, Any]) -> None:
    check_shapes(doc)


def test_generator_covers_every_kind_of_node() -> None:
    """The DAG strategy reaches every block kind the property promises (a cheap sanity check)."""
    seen: set[str] = set()

    @settings(max_examples=60, deadline=None, database=None)
    @given(random_blueprint())
    def collect(doc: dict[str, Any]) -> None:
        for node in doc["nodes"].values():
            if "block" in node:
                seen.add(node["block"])
            else:
                seen.add("repeat")
                seen.update(n["block"] for n in node["body"]["nodes"].values())

    collect()
    assert seen >= {
        "embed.token",
        "norm.layer",
        "norm.rms",
        "ffn.mlp",
        "ffn.glu",
        "mix.attention",
        "mix.lstm",
        "struct.add",
        "struct.linear",
        "repeat",
        "head.lm",
    }


# ---- (b) mutated shipped blueprints: built, or located BlueprintErrors ---------------------------

SMALL = {"vocab": 11, "d_model": 8, "heads": 2, "max_len": 16, "hidden": 8, "d_common": 4}
SHIPPED = sorted(builtin_blueprints())
SCALARS = st.one_of(
    st.integers(-3, 48),
    st.booleans(),
    st.none(),
    st.sampled_from(
        [
            "",
            "x",
            "embed",
            "mix.attention",
            "norm.lyer",
            "$d_model",
            "$nope",
            "$d_model * 2",
            "blocks.*.out",
            "tokens",
            "a.b.c",
            "__init__",
        ]
    ),
    st.text(alphabet=string.ascii_letters + string.digits + "._$*- ", max_size=12),
    st.lists(st.sampled_from(["embed", "x", "tokens", 1]), max_size=3),
    st.builds(dict),
    st.builds(lambda: {"block": "norm.layer"}),
)


def _small_shipped(name: str) -> dict[str, Any]:
    doc = plain(load_yaml(builtin_blueprints()[name].read_text(encoding="utf-8"), f"{name}.yaml"))
    for key in doc.get("params", {}):
        if key in SMALL:
            doc["params"][key] = SMALL[key]
    return doc


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


def _node_tables(doc: Any) -> list[dict[str, Any]]:
    """Every ``nodes:`` mapping, the top one and those of bodies."""
    found = []
    if isinstance(doc, dict):
        if isinstance(doc.get("nodes"), dict):
            found.append(doc["nodes"])
        for v in doc.values():
            found += _node_tables(v)
    elif isinstance(doc, list):
        for v in doc:
            found += _node_tables(v)
    return found


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, str]:
    name = draw(st.sampled_from(SHIPPED))
    doc = _small_shipped(name)
    for _ in range(draw(st.integers(1, 2))):
        paths = _paths(doc)
        tables = [t for t in _node_tables(doc) if t]
        op = draw(st.sampled_from(["delete", "rename", "replace", "block", "drop", "swap"]))
        if op in ("delete", "rename", "replace") and paths:
            path = draw(st.sampled_from(paths))
            parent, key = _parent(doc, path), path[-1]
            if op == "delete":
                del parent[key]
            elif op == "rename" and isinstance(parent, dict):
                new = draw(
                    st.sampled_from([str(key) + "x", str(key)[:-1], "in", "block", "args", "use", "nodes", "forward", "1"])
                )
                parent[new] = parent.pop(key)
            else:
                parent[key] = draw(SCALARS)
        elif op == "block" and tables:
            table = draw(st.sampled_from(tables))
            node = table[draw(st.sampled_from(sorted(table)))]
            if isinstance(node, dict):
                node["block"] = draw(
                    st.sampled_from(
                        [
                            "mix.atention",
                            "norm.rms",
                            "struct.add",
                            "head.lm",
                            "ffn.glu",
                            "mix.lstm",
                            "embed.token",
                            "nope",
                            "struct.linear",
                        ]
                    )
                )
        elif op == "drop" and tables:
            table = draw(st.sampled_from(tables))
            del table[draw(st.sampled_from(sorted(table)))]
        elif op == "swap" and tables:
            table = draw(st.sampled_from(tables))
            readers = [n for n in table.values() if isinstance(n, dict) and "in" in n]
            if len(readers) >= 2:
                a, b = draw(st.lists(st.sampled_from(readers), min_size=2, max_size=2, unique_by=id))
                a["in"], b["in"] = b["in"], a["in"]
    return name, dump_yaml(doc)


def _assert_located(error: BlueprintError, name: str, text: str) -> None:
    for d in error.diagnostics:
        if d.path == "--set":
            continue
        assert d.mark is not None, d.render()
        marks = [d.mark, *d.mark.via]
        for mark in marks:
            source = SOURCES.get(mark.file)
            if mark.file == name:
                source = text
            assert source is not None, f"mark in an unknown file: {d.render()}"
            rows = source.splitlines() or [""]
            assert 1 <= mark.line <= len(rows) + 1, d.render()
            if mark.line <= len(rows):
                assert 1 <= mark.col <= len(rows[mark.line - 1]) + 1, d.render()


def check_mutation(case: tuple[str, str]) -> None:
    shipped, text = case
    name = f"mutated-{shipped}.yaml"
    try:
        compile_blueprint(load_blueprint(name, text=text))
    except BlueprintError as error:
        _assert_located(error, name, text)


@QUICK
@given(mutated())
def test_mutated_shipped_blueprints_build_or_fail_with_located_errors(case: tuple[str, str]) -> None:
    check_mutation(case)


@pytest.mark.slow
@MODELS
@given(mutated())
def test_mutated_shipped_blueprints_build_or_fail_with_located_errors_many(case: tuple[str, str]) -> None:
    check_mutation(case)


RICH = """\
ssmgraph: 1
params: {d: 8, heads: 2}
inputs:
  tokens: {dtype: int64, shape: [batch, seq]}
  feats: {dtype: float32, shape: [batch, seq, 4]}
nodes:
  embed: {block: embed.token, in: tokens, args: {vocab: 11, dim: $d}}
  fe: {block: embed.linear, in: feats, args: {dim: $d}}
  x0: {block: struct.add, in: [embed, fe]}
  st:
    repeat: 3
    in: x0
    carry: x
    body:
      inputs: [x]
      nodes:
        n: {block: norm.layer, in: x}
        m: {block: mix.attention, in: n, args: {heads: $heads}}
        out: {block: struct.add, in: [x, m]}
      outputs: {x: out}
    at:
      1: {nodes: {m: {block: mix.lstm}}}
      0-1: {nodes: {n: {args: {eps: 0.1}}}}
  fr:
    repeat: 2
    in: st
    use: fragments/prenorm.yaml
    args: {mixer: mix.lstm}
    at:
      -1: {args: {mixer: mix.attention, mixer_args: {heads: 2}}}
  g:
    in: {x: fr}
    body:
      inputs: [x]
      nodes: {k: {block: norm.rms, in: x}}
      outputs: {y: k}
  sh: {share: g.k, in: fr}
  cross: {block: mix.cross_attention, in: {x: sh, memory: st.-1.out}}
  head: {block: head.lm, in: cross, args: {vocab: 11}, tie: {weight: embed.weight}}
outputs:
  logits: head
  feat: st.1.out
taps:
  resid: {at: st.*.out, project: 4}
  mid: {at: fr.0.out, project: {block: stitch.linear, args: {dim: 3}}}
  plain: g.k
models:
  one: {outputs: [logits], taps: [resid]}
"""
REPLACEMENTS = [43, 0, "x", "", [], {}, None, True, ["embed"], {"a": 1}, 1.5, "$nope", "st.*", [[1]], "DELETE", "RENAME"]


def test_rich_blueprint_builds() -> None:
    """The baseline of the sweep below uses every construct: stacks, at, fragments, groups, share, tie, taps, views."""
    model = compile_blueprint(load_blueprint("rich.yaml", text=RICH))
    tokens, feats = torch.randint(0, 11, (2, 5)), torch.randn(2, 5, 4)
    out, taps = model(tokens, feats, taps=True)
    assert out["logits"].shape == (2, 5, 11) and set(taps) == {"resid.0", "resid.1", "resid.2", "mid", "plain"}


@pytest.mark.slow
@pytest.mark.parametrize("replacement", REPLACEMENTS, ids=repr)
def test_every_single_replacement_in_a_rich_blueprint_builds_or_is_located(replacement: Any) -> None:
    """Deterministic sweep: each value of the document replaced (or deleted, or its key renamed) in turn."""
    base = plain(load_yaml(RICH, "rich.yaml"))
    crashes = []
    for path in _paths(base):
        doc = copy.deepcopy(base)
        parent, key = _parent(doc, path), path[-1]
        if replacement == "DELETE":
            del parent[key]
        elif replacement == "RENAME":
            if not isinstance(parent, dict):
                continue
            parent[f"{key}_"] = parent.pop(key)
        else:
            parent[key] = copy.deepcopy(replacement)
        text = dump_yaml(doc)
        try:
            compile_blueprint(load_blueprint("swept.yaml", text=text))
        except BlueprintError as error:
            try:
                _assert_located(error, "swept.yaml", text)
            except AssertionError as exc:
                crashes.append(f"{'.'.join(map(str, path))}: unlocated: {str(exc).splitlines()[0]}")
        except Exception as exc:  # noqa: BLE001 - collecting every crash is the point
            crashes.append(f"{'.'.join(map(str, path))}: {type(exc).__name__}: {exc}")
    assert not crashes, "\n".join(crashes)


@pytest.mark.parametrize("shipped", SHIPPED)
def test_small_shipped_blueprints_build_after_a_dump_round_trip(shipped: str) -> None:
    """The unmutated baseline of the property above: every shipped blueprint builds."""
    try:
        compile_blueprint(load_blueprint(f"{shipped}.yaml", text=dump_yaml(_small_shipped(shipped))))
    except BlueprintError as error:
        if set(error.codes) == {"E201"}:
            pytest.skip(f"{shipped} needs blocks that are not registered: {error.diagnostics[0].message}")
        raise


# ---- (c) the strict loader -----------------------------------------------------------------------

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


# ---- (d) expressions -----------------------------------------------------------------------------

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
