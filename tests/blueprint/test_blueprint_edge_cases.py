"""Edge cases of the blueprint format found in review: tie and share chains, per-layer
overrides of expression args, ``$$`` escapes, reserved names, non-string keys, expression
bounds and YAML tags. Each error case asserts a located, coded diagnostic (never a raw
exception); each build case asserts the built model's structure or save→load equality.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import ssmgraph
from ssmgraph.blueprint import load_blueprint
from ssmgraph.blueprint.expr import ExprError, evaluate
from ssmgraph.blueprint.yamlsafe import dump_yaml, load_yaml
from ssmgraph.errors import BlueprintError, Diagnostic
from ssmgraph.graph.compile import compile_blueprint

FILE = "bp.yaml"
TOKENS = "inputs: {tokens: {}}"
FEATURES = "inputs: {x: {dtype: float32, shape: [batch, seq, 8]}}"
EMBED = "  e: {block: embed.token, in: tokens, args: {vocab: 10, dim: 8}}"


def bp(*lines: str) -> str:
    return "\n".join(("ssmgraph: 1", *lines)) + "\n"


def build(text: str) -> ssmgraph.CompiledModel:
    return compile_blueprint(load_blueprint(FILE, text=text))


def errors(text: str, overrides: dict | None = None, *, name: str | Path = FILE) -> list[Diagnostic]:
    """The diagnostics of loading and compiling ``text`` (or the file ``name``)."""
    with pytest.raises(BlueprintError) as info:
        blueprint = load_blueprint(name, overrides, text=text) if text else load_blueprint(name, overrides)
        compile_blueprint(blueprint)
    return info.value.diagnostics


def located(text: str, code: str, line: int, message: str, *, name: str | Path = FILE) -> Diagnostic:
    """The one diagnostic of ``text``: its code, line and a key part of its message."""
    found = errors(text, name=name)
    rendered = "\n".join(d.render() for d in found)
    assert [d.code for d in found] == [code], rendered
    assert found[0].mark is not None and found[0].mark.line == line, rendered
    assert message in found[0].message, rendered
    return found[0]


# ---- 1. tie chains --------------------------------------------------------------------------


TIE_CHAIN = bp(
    TOKENS,
    "nodes:",
    "  embed: {block: embed.token, in: tokens, args: {vocab: 10, dim: 4}}",
    "  head2: {block: head.lm, in: embed, args: {vocab: 10}, tie: {weight: head1.weight}}",
    "  head1: {block: head.lm, in: embed, args: {vocab: 10}, tie: {weight: embed.weight}}",
    "  y: {block: struct.add, in: [head1, head2]}",
    "outputs: {y: y}",
)


def test_tie_chain_ties_every_link_to_the_final_owner(tmp_path: Path) -> None:
    model = build(TIE_CHAIN)
    assert model.head2.weight is model.embed.weight and model.head1.weight is model.embed.weight
    assert model.tied == {"head2.weight": "embed.weight", "head1.weight": "embed.weight"}
    ssmgraph.save(model, tmp_path / "m")
    tokens = torch.randint(0, 10, (2, 3))
    torch.testing.assert_close(ssmgraph.load(tmp_path / "m")(tokens), model(tokens))


@pytest.mark.parametrize(
    ("ties", "cycle"),
    [
        (("head1.weight", "head2.weight"), "head2.weight -> head1.weight -> head2.weight"),
        (("head2.weight", "embed.weight"), "head2.weight -> head2.weight"),
    ],
)
def test_tie_cycle_is_e230(ties: tuple[str, str], cycle: str) -> None:
    text = TIE_CHAIN.replace("head1.weight}", f"{ties[0]}}}").replace("embed.weight}", f"{ties[1]}}}")
    located(text, "E230", 5, f"ties form a cycle: {cycle}")


# ---- 2. per-layer node overrides of a fragment node with expression args ---------------------


def stack(at: str, body_args: str = "{mixer: mix.mamba}") -> str:
    return bp(
        TOKENS,
        "nodes:",
        EMBED,
        "  blocks:",
        "    repeat: 3",
        "    in: e",
        "    carry: x",
        f"    body: {{use: fragments/prenorm.yaml, args: {body_args}}}",
        f"    at: {at}",
        "outputs: {y: blocks}",
    )


def test_node_override_replaces_block_and_args_of_expression_args() -> None:
    model = build(stack("{1: {nodes: {mix: {block: mix.attention, args: {heads: 2}}}}}"))
    assert [model.nodes[f"blocks.{i}.mix"].block for i in range(3)] == ["mix.mamba", "mix.attention", "mix.mamba"]
    assert model.nodes["blocks.1.mix"].args["heads"] == 2


def test_node_override_args_update_the_evaluated_expression_args() -> None:
    text = stack(
        "{-1: {nodes: {mix: {args: {heads: 4}}}}}", body_args="{mixer: mix.attention, mixer_args: {heads: 2, causal: false}}"
    )
    model = build(text)
    assert [model.nodes[f"blocks.{i}.mix"].args["heads"] for i in range(3)] == [2, 2, 4]
    assert not model.nodes["blocks.2.mix"].args["causal"]


def test_node_override_of_an_inline_body_keeps_the_base_args() -> None:
    text = bp(
        FEATURES,
        "nodes:",
        "  st:",
        "    repeat: 2",
        "    in: x",
        "    body: {inputs: [x], nodes: {n: {block: ffn.mlp, in: x, args: {hidden: 8, bias: false}}}, outputs: {x: n}}",
        "    at: {1: {nodes: {n: {args: {hidden: 16}}}}}",
        "outputs: {y: st}",
    )
    model = build(text)
    assert [(model.nodes[f"st.{i}.n"].args["hidden"], model.nodes[f"st.{i}.n"].args["bias"]) for i in range(2)] == [
        (8, False),
        (16, False),
    ]


# ---- 3. args beside an inline body --------------------------------------------------------------


def test_args_on_a_node_with_body_is_e110() -> None:
    text = bp(
        TOKENS,
        "nodes:",
        EMBED,
        "  blocks:",
        "    repeat: 2",
        "    in: e",
        "    body: {use: fragments/prenorm.yaml}",
        "    args: {mixer: mix.mamba}",
        "outputs: {y: blocks}",
    )
    d = located(text, "E110", 9, "takes no args")
    assert d.path == "nodes.blocks.args" and "use" in d.help


# ---- 4. a projected tap at an input ---------------------------------------------------------------


def test_tap_projection_at_an_input_projects() -> None:
    model = build(
        bp(FEATURES, "nodes:", "  n: {block: norm.layer, in: x}", "outputs: {y: n}", "taps:", "  raw: {at: x, project: 4}")
    )
    _, taps = model(torch.randn(1, 3, 8), taps=True)
    assert taps["raw"].shape == (1, 3, 4)
    assert "taps.raw.weight" in dict(model.named_parameters())


# ---- 5. a body node named like a body input ------------------------------------------------------------


def test_body_node_named_like_a_body_input_is_e200() -> None:
    text = bp(
        FEATURES,
        "nodes:",
        "  g:",
        "    in: x",
        "    body:",
        "      inputs: [x]",
        "      nodes:",
        "        x: {block: struct.linear, in: x, args: {dim: 8}}",
        "        out: {block: norm.layer, in: x}",
        "      outputs: {y: out}",
        "outputs: {y: g}",
    )
    located(text, "E200", 9, "'x' names both a body input and a node")


def test_fragment_node_named_like_its_input_is_e200(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text(
        bp("kind: fragment", "inputs: [x]", "nodes:", "  x: {block: norm.layer, in: x}", "outputs: {x: x}")
    )
    (tmp_path / "main.yaml").write_text(bp(FEATURES, "nodes:", "  g: {use: f.yaml, in: x}", "outputs: {y: g}"))
    d = located("", "E200", 5, "'x' names both a body input and a node", name=tmp_path / "main.yaml")
    assert d.mark is not None and d.mark.file.endswith("f.yaml") and len(d.mark.via) == 1


# ---- 6. share chains and cycles ------------------------------------------------------------------------


def test_share_chain_in_any_file_order() -> None:
    text = bp(
        TOKENS,
        "nodes:",
        EMBED,
        "  a: {share: b, in: e}",
        "  b: {share: c, in: e}",
        "  c: {block: norm.layer, in: e}",
        "  y: {block: struct.add, in: [a, c]}",
        "outputs: {y: y}",
    )
    model = build(text)
    assert model.nodes["a"].module_path == "c" and model.nodes["a"].block == "norm.layer"
    tokens = torch.randint(0, 10, (1, 3))
    torch.testing.assert_close(model(tokens), 2 * model.c(model.e(tokens)))


@pytest.mark.parametrize(
    ("nodes", "line", "cycle"),
    [
        (["  a: {share: a, in: e}"], 5, "a -> a"),
        (["  a: {share: b, in: e}", "  b: {share: a, in: e}"], 5, "a -> b -> a"),
        (["  z: {share: a, in: e}", "  a: {share: b, in: e}", "  b: {share: a, in: e}"], 6, "a -> b -> a"),
    ],
)
def test_share_cycle_is_e230_once(nodes: list[str], line: int, cycle: str) -> None:
    text = bp(TOKENS, "nodes:", EMBED, *nodes, "outputs: {y: a}")
    located(text, "E230", line, f"shares form a cycle: {cycle}")


# ---- 7. $$ escapes ---------------------------------------------------------------------------------------


DOLLAR = bp(
    "params: {label: $$price, nested: [$$a, {b: $$$c}], d: 8}",
    TOKENS,
    "nodes:",
    "  e: {block: embed.token, in: tokens, args: {vocab: 10, dim: $d}}",
    "outputs: {y: e}",
)


def test_resolved_dollar_strings_are_escaped_when_saved(tmp_path: Path) -> None:
    model = build(DOLLAR)
    assert model.blueprint.params["label"] == "$price"
    assert model.blueprint.to_dict()["params"]["nested"] == ["$$a", {"b": "$$$c"}]
    ssmgraph.save(model, tmp_path / "m")
    reloaded = ssmgraph.load(tmp_path / "m")
    assert reloaded.blueprint.params == {"label": "$price", "nested": ["$a", {"b": "$$c"}], "d": 8}


def dollar_fragment(tmp_path: Path, use_line: str) -> Path:
    (tmp_path / "f.yaml").write_text(
        bp(
            "kind: fragment",
            "params: {blk: norm.layer, price: norm.layer}",
            "inputs: [x]",
            "nodes:",
            "  n: {block: $blk, in: x}",
            "outputs: {x: n}",
        )
    )
    (tmp_path / "main.yaml").write_text(bp(FEATURES, "nodes:", use_line, "outputs: {y: g}"))
    return tmp_path / "main.yaml"


def test_fragment_args_are_evaluated_once(tmp_path: Path) -> None:
    blueprint = load_blueprint(dollar_fragment(tmp_path, "  g: {use: f.yaml, in: x, args: {blk: $$price}}"))
    assert blueprint.nodes["g"].body.nodes["n"].block == "$price"


def test_override_args_are_evaluated_once(tmp_path: Path) -> None:
    use = "  g: {repeat: 2, in: x, body: {use: f.yaml}, at: {1: {args: {blk: $$price}}}}"
    blueprint = load_blueprint(dollar_fragment(tmp_path, use))
    assert [blueprint.nodes["g"].at.get(i, blueprint.nodes["g"].body).nodes["n"].block for i in range(2)] == [
        "norm.layer",
        "$price",
    ]


# ---- 8. names that would break the generated forward -----------------------------------------------------


@pytest.mark.parametrize("name", ["self", "_forward_fn", "_modules", "_parameters", "_plan_cache"])
def test_node_name_reserved_by_the_module_is_e200(name: str) -> None:
    text = bp(TOKENS, "nodes:", EMBED, f"  {name}: {{block: norm.layer, in: e}}", "outputs: {y: e}")
    located(text, "E200", 5, repr(name))


def test_input_named_self_is_e200() -> None:
    located(
        bp("inputs: {self: {}}", "nodes:", "  e: {block: embed.token, in: self, args: {vocab: 10, dim: 8}}", "outputs: {y: e}"),
        "E200",
        2,
        "'self' is reserved",
    )


@pytest.mark.parametrize(
    ("tap", "part"), [("class", "class"), ("h.if", "if"), ("h._modules", "_modules"), ("forward", "forward")]
)
def test_tap_name_with_a_keyword_or_reserved_part_is_e200(tap: str, part: str) -> None:
    text = bp(TOKENS, "nodes:", EMBED, "outputs: {y: e}", "taps:", f"  {tap}: {{at: e, project: 3}}")
    located(text, "E200", 7, f"{part!r} is a Python keyword or reserved name")


@pytest.mark.parametrize("tap", ["step.h", "outputs", "view.p"])
def test_tap_names_may_reuse_compiled_model_members(tap: str) -> None:
    """Taps live in their own container: only nn.Module members would clash (merges name them
    after models, e.g. step.h)."""
    text = bp(TOKENS, "nodes:", EMBED, "outputs: {y: e}", "taps:", f"  {tap}: {{at: e, project: 3}}")
    assert build(text)(torch.randint(0, 10, (1, 3)), taps=True)[1][tap].shape == (1, 3, 3)


def test_a_share_of_a_failed_share_reports_only_the_first_error() -> None:
    text = bp(
        FEATURES,
        "nodes:",
        "  a: {block: norm.layer, in: x}",
        "  b: {share: nothere, in: x}",
        "  c: {share: b, in: x}",
        "outputs: {y: c}",
    )
    located(text, "E210", 5, "no input or node named 'nothere'")


# ---- 9. mapping keys that are not strings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "line", "path"),
    [
        (["  e: {block: embed.token, in: tokens, args: {vocab: 10, dim: 8, 1: 2}}", "outputs: {y: e}"], 4, "nodes.e.args.1"),
        ([EMBED, "  g: {use: fragments/prenorm.yaml, in: e, args: {1: 2}}", "outputs: {y: g}"], 5, "nodes.g.args.1"),
        ([EMBED, "outputs: {y: e}", "taps:", "  t: {at: e, project: {args: {dim: 4, 7: 1}}}"], 7, "taps.t.project.args.7"),
    ],
)
def test_non_string_argument_names_are_e112(lines: list[str], line: int, path: str) -> None:
    d = located(bp(TOKENS, "nodes:", *lines), "E112", line, "argument name must be a string, got int")
    assert d.path == path


def test_non_string_param_name_with_unknown_override_has_no_type_error() -> None:
    text = bp(
        "params: {d: 8, 1: 3}",
        TOKENS,
        "nodes:",
        "  e: {block: embed.token, in: tokens, args: {vocab: 10, dim: $d}}",
        "outputs: {y: e}",
    )
    assert sorted(d.code for d in errors(text, {"dd": 3})) == ["E121", "E200"]


# ---- 10. expression bounds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "$0.5 ** -100000",
        "$(-0.5) ** -3000.5",
        "$(-8) ** 0.5",
        "$l * 9000000000000000000",
        "$l + l",
        "$m + m",
        "$n * 2",
        '$"a" * 3',
    ],
)
def test_bad_arithmetic_is_e120(expression: str) -> None:
    text = bp(
        "params: {l: [0], m: {a: 1}, n: null}",
        TOKENS,
        "nodes:",
        EMBED,
        f"  lin: {{block: struct.linear, in: e, args: {{dim: '{expression}'}}}}",
        "outputs: {y: lin}",
    )
    located(text, "E120", 6, "")


def test_number_and_string_arithmetic_still_works() -> None:
    assert evaluate("$2 ** 10 + 0.5 ** -2 + d // 3", {"d": 9}) == 1024 + 4 + 3
    assert evaluate("$a + '-' + b", {"a": "x", "b": "y"}) == "x-y"
    with pytest.raises(ExprError):
        evaluate("$l * 1000000", {"l": [0]})


# ---- 11. YAML tags and .nan --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["a: !!int abc", "a: !!bool maybe", "a: !!str x", "a: !!null foo", "a: !!map 3", "a: ! x", "a: [!!int 1]"]
)
def test_any_explicit_tag_is_e103(text: str) -> None:
    with pytest.raises(BlueprintError) as info:
        load_yaml(text, "x.yaml")
    (d,) = info.value.diagnostics
    assert d.code == "E103" and d.mark is not None and d.mark.line == 1 and "is not allowed" in d.message


def test_tagged_block_arg_is_e103_at_the_tag() -> None:
    text = bp(TOKENS, "nodes:", "  e: {block: embed.token, in: tokens, args: {vocab: !!int ten, dim: 8}}", "outputs: {y: e}")
    d = located(text, "E103", 4, "tag 'tag:yaml.org,2002:int' is not allowed")
    assert d.mark is not None and d.mark.col == text.splitlines()[3].index("!!int") + 1


@pytest.mark.parametrize("text", [".nan", ".NaN", ".NAN"])
def test_nan_reads_as_a_float(text: str) -> None:
    assert math.isnan(load_yaml(f"a: {text}", "x.yaml")["a"])


def test_dumped_nan_reads_back() -> None:
    assert math.isnan(load_yaml(dump_yaml({"a": float("nan")}), "x.yaml")["a"])
