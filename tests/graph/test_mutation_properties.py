"""Property tests of the compiler on broken input: mutated shipped blueprints (and a deterministic
sweep over a rich one) either build or fail with BlueprintErrors located in the file."""

from __future__ import annotations

import copy
import string
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from property_settings import MODELS, QUICK

from ssmgraph.blueprint import builtin_blueprints, load_blueprint
from ssmgraph.blueprint.yamlsafe import dump_yaml, load_yaml, plain
from ssmgraph.errors import SOURCES, BlueprintError
from ssmgraph.graph.compile import compile_blueprint

# ---- mutated shipped blueprints: built, or located BlueprintErrors ---------------------------

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
