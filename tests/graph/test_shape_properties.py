"""Property tests of the compiler: on blueprints hypothesis makes up (random DAGs of built-in
blocks and repeat stacks), the inferred shape of every node equals the shape a real forward
pass gives."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from property_settings import MODELS, QUICK

from ssmgraph.blueprint import load_blueprint
from ssmgraph.blueprint.yamlsafe import dump_yaml
from ssmgraph.graph.compile import compile_blueprint

BATCH, SEQ, VOCAB = 2, 5, 11
DIMS = (8, 12, 16)


# ---- generated blueprints: inferred shapes = real shapes ------------------------------------


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
