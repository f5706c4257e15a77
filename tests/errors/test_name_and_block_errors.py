"""Error codes of names and blocks: E200 (names), E201-E204 (blocks and their parameters).

Each test asserts the code, the exact position (line and column of the mark), the node
path, a key part of the message and of the help. Bad blueprints are built with the helpers
of error_helpers.py.
"""

from __future__ import annotations

import pytest
from error_helpers import HEAD, MIX, bp, check, diagnostics, only, with_head

# ---- E200: names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message", "help"),
    [
        ("forward", "'forward' is reserved", "forward_"),
        ("state_dict", "'state_dict' is reserved", "state_dict_"),
        ("taps", "'taps' is reserved", "taps_"),
        ("2embed", "'2embed' is not an identifier", None),
        ("class", "'class' is not an identifier", None),
    ],
)
def test_e200_bad_node_names(name: str, message: str, help: str | None) -> None:
    d = only(with_head(f"  {name}: {{block: norm.layer, in: embed}}", "outputs: {y: embed}"), "E200")
    check(d, "E200", 7, 3, f"nodes.{name}", message, help)


def test_e200_input_and_node_with_one_name() -> None:
    d = only(with_head("  tokens: {block: norm.layer, in: embed}", "outputs: {y: embed}"), "E200")
    check(d, "E200", 7, 3, "nodes.tokens", "names both an input and a node")


def test_e200_parameter_name() -> None:
    d = only(bp("ssmgraph: 1", "params: {2d: 2}", *HEAD[2:], "outputs: {y: embed}").replace("$d", "16"), "E200")
    check(d, "E200", 2, 10, "params", "parameter name '2d' is not an identifier")


def test_e200_output_name() -> None:
    d = only(with_head("outputs: {'a b': embed}"), "E200")
    check(d, "E200", 7, 11, "outputs", "output name 'a b' must be a name")


def test_e200_body_input_name() -> None:
    text = with_head(
        "  st:",
        "    repeat: 2",
        "    in: embed",
        "    carry: x",
        "    body: {inputs: [x, 2y], nodes: {n: {block: norm.layer, in: x}}, outputs: {x: n}}",
        "outputs: {y: st}",
    )
    found = diagnostics(text)
    d = next(d for d in found if d.code == "E200")
    check(d, "E200", 11, 24, "nodes.st.body.inputs", "name '2y' is not an identifier")


# ---- E201-E204: blocks and their parameters --------------------------------------------------------


def test_e201_unknown_block_with_suggestion() -> None:
    d = only(with_head("  mix: {block: mix.atention, in: embed}", "outputs: {y: mix}"), "E201")
    check(d, "E201", 7, 16, "mix.block", "unknown block 'mix.atention'", "did you mean 'mix.attention'")
    assert "ssmgraph blocks" in d.help


def test_e201_unknown_block_from_an_expression() -> None:
    text = bp("ssmgraph: 1", "params: {d: 16, norm: norm.lyer}", *HEAD[2:], "  n: {block: $norm, in: embed}", "outputs: {y: n}")
    d = only(text, "E201")
    check(d, "E201", 7, 14, "n.block", "unknown block 'norm.lyer'", "did you mean 'norm.layer'")


def test_e201_in_a_repeat_stack_is_reported_once() -> None:
    text = with_head(
        "  st:",
        "    repeat: 3",
        "    in: embed",
        "    body:",
        "      inputs: [x]",
        "      nodes: {n: {block: norm.lyer, in: x}}",
        "      outputs: {x: n}",
        "outputs: {y: st}",
    )
    found = diagnostics(text)
    assert {d.code for d in found} == {"E201"}
    check(found[0], "E201", 12, 26, "st.0.n.block", "unknown block 'norm.lyer'", "did you mean 'norm.layer'")
    # errors.Collector: "a repeated body reports a mistake once"
    assert len(found) == 1, "reported once per layer: " + ", ".join(d.path for d in found)


def test_e202_unknown_block_parameter() -> None:
    d = only(with_head(MIX.format("$heads, hedas: 2"), "outputs: {y: mix}"), "E202")
    check(d, "E202", 7, 64, "mix.args.hedas", "block 'mix.attention' has no parameter 'hedas'", "did you mean 'heads'")


def test_e202_block_without_parameters() -> None:
    text = with_head("  s: {block: struct.add, in: [embed, embed], args: {scale: 2}}", "outputs: {y: s}")
    d = only(text, "E202")
    check(d, "E202", 7, 53, "s.args.scale", "has no parameter 'scale'", "struct.add takes no parameters")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("'four'", "expected int, got str 'four'"),
        ("0", "0 is below the minimum 1"),
        ("true", "got a boolean"),
        ("2.5", "expected int, got float 2.5"),
        ("null", "got null"),
    ],
)
def test_e203_bad_block_parameter_value(value: str, message: str) -> None:
    d = only(with_head(MIX.format(value), "outputs: {y: mix}"), "E203")
    check(d, "E203", 7, 49, "mix.args.heads", message, "must divide dim")


def test_e203_choice() -> None:
    text = with_head("  f: {block: ffn.mlp, in: embed, args: {activation: tanh}}", "outputs: {y: f}")
    d = only(text, "E203")
    check(d, "E203", 7, 41, "f.args.activation", "'tanh' is not one of 'gelu', 'relu', 'silu', 'gelu_tanh'")


def test_e203_above_maximum() -> None:
    text = with_head("  f: {block: ffn.mlp, in: embed, args: {dropout: 1.5}}", "outputs: {y: f}")
    d = only(text, "E203")
    check(d, "E203", 7, 41, "f.args.dropout", "1.5 is above the maximum 1")


def test_e204_missing_block_parameter() -> None:
    d = only(with_head("  head: {block: head.lm, in: embed}", "outputs: {y: head}"), "E204")
    check(d, "E204", 7, 3, "head.args", "block 'head.lm' needs parameter 'vocab'", "add args: {vocab: ...}")


def test_e204_points_at_args_when_present() -> None:
    d = only(with_head("  head: {block: head.lm, in: embed, args: {bias: true}}", "outputs: {y: head}"), "E204")
    check(d, "E204", 7, 43, "head.args", "needs parameter 'vocab'")
