"""Error codes of the graph: E210-E213 (references, cycles, taps, stacks), E220 (shapes) and
E230 (share and tie).

Each test asserts the code, the exact position (line and column of the mark), the node
path, a key part of the message and of the help. Bad blueprints are built with the helpers
of error_helpers.py.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from error_helpers import MIX, STACK, check, diagnostics, only, with_head

import ssmgraph
from ssmgraph.errors import BlueprintError

# ---- E210-E213: graph structure --------------------------------------------------------------------


def test_e210_missing_reference_with_suggestion() -> None:
    text = with_head(
        "  mix: {block: mix.attention, in: embed}", "  head: {block: head.lm, in: mx, args: {vocab: 10}}", "outputs: {y: head}"
    )
    d = only(text, "E210")
    check(d, "E210", 8, 30, "head.in", "no input or node named 'mx'", "did you mean 'mix'?")


def test_e210_missing_output_reference() -> None:
    d = only(with_head("outputs: {y: embd}"), "E210")
    check(d, "E210", 7, 14, "outputs.y", "no input or node named 'embd'", "did you mean 'embed'?")


def test_e210_stack_layer_out_of_range() -> None:
    d = only(with_head(*STACK, "  z: {block: norm.layer, in: st.5.n}", "outputs: {y: z}"), "E210")
    check(d, "E210", 14, 30, "z.in", "'st' is a stack of 2 layers; '5' is not a layer index", "st.-1.<node>")


def test_e210_reference_to_a_layer_instead_of_a_node() -> None:
    d = only(with_head(*STACK, "  z: {block: norm.layer, in: st.1}", "outputs: {y: z}"), "E210")
    check(d, "E210", 14, 30, "z.in", "'st.1' names a layer; name a node inside it", "e.g. st.1.n")


def test_e210_wrong_number_of_inputs() -> None:
    d = only(with_head("  z: {block: mix.cross_attention, in: embed}", "outputs: {y: z}"), "E210")
    check(d, "E210", 7, 39, "z.in", "takes 2 input(s) (x, memory), got 1", "memory: <node>")


def test_e210_unknown_port() -> None:
    d = only(with_head("  z: {block: norm.layer, in: {y: embed}}", "outputs: {y: z}"), "E210")
    check(d, "E210", 7, 30, "z.in", "unknown 'y'; missing 'x'")


def test_e210_override_of_a_node_the_body_lacks() -> None:
    d = only(with_head(*STACK, "    at:", "      1: {nodes: {m: {block: norm.rms}}}", "outputs: {y: st}"), "E210")
    check(d, "E210", 15, 22, "nodes.st.at.1.nodes.m", "override names node 'm'", "expected one of: n")


def test_e210_model_view_unknown_output() -> None:
    found = diagnostics(with_head("outputs: {y: embed}", "models:", "  v: {outputs: [z]}"))
    d = next(d for d in found if d.code == "E210")
    check(d, "E210", 9, 16, "models.v.outputs", "model view names output 'z'")


def test_e112_model_view_items_must_be_names() -> None:
    found = diagnostics(with_head("outputs: {y: embed}", "models:", "  v: {outputs: [{}]}"))  # a crash here is a bug
    d = next(d for d in found if d.code in ("E112", "E210"))
    check(d, d.code, 9, 16, "models.v.outputs", "")


def test_e210_unknown_model_view() -> None:
    with pytest.raises(BlueprintError) as info:
        ssmgraph.build("pair", model="lstn", d_model=16, heads=2, layers=1, d_common=8)
    (d,) = info.value.diagnostics
    assert (d.code, d.path) == ("E210", "--model")
    assert "no model view 'lstn'" in d.message and "did you mean 'lstm'" in d.help


def test_e211_cycle() -> None:
    text = with_head("  a: {block: struct.add, in: [embed, b]}", "  b: {block: norm.layer, in: a}", "outputs: {y: b}")
    d = only(text, "E211")
    check(d, "E211", 8, 3, "b", "the graph has a cycle: a -> b -> a", "repeat stack with carry")


def test_e211_self_loop() -> None:
    d = only(with_head("  a: {block: struct.add, in: [embed, a]}", "outputs: {y: a}"), "E211")
    check(d, "E211", 7, 3, "a", "the graph has a cycle: a -> a")


def test_e211_cycle_through_a_stack() -> None:
    text = with_head(*STACK, "  z: {block: struct.add, in: [embed, st]}", "outputs: {y: z}").replace(
        "in: embed\n    body", "in: z\n    body"
    )
    d = only(text, "E211")
    assert "z -> st.0.n -> st.1.n -> z" in d.message
    assert d.mark is not None and d.mark.line in (12, 14)


def test_e211_group_reading_itself() -> None:
    text = with_head(
        "  g:",
        "    in: g.n",
        "    body: {inputs: [x], nodes: {n: {block: norm.layer, in: x}}, outputs: {x: n}}",
        "outputs: {y: g}",
    )
    found = diagnostics(text)
    d = next(d for d in found if d.code == "E211")
    check(d, "E211", 8, 9, "g", "depends on itself through a sub-graph")


def test_e212_tap_matching_nothing() -> None:
    d = only(with_head("outputs: {y: embed}", "taps:", "  t: {at: emb.*}"), "E212")
    check(d, "E212", 9, 11, "taps.t", "tap pattern 'emb.*' matches no node", "nodes there include: embed")


def test_e212_tap_on_a_missing_stack() -> None:
    d = only(with_head("outputs: {y: embed}", "taps:", "  resid: {at: blocks.*.out}"), "E212")
    check(d, "E212", 9, 15, "taps.resid", "'blocks.*.out' matches no node")


@pytest.mark.parametrize(("count", "line_col"), [("0", (8, 13)), ("20000", (8, 13)), ("-1", (8, 13))])
def test_e213_repeat_count_out_of_range(count: str, line_col: tuple[int, int]) -> None:
    text = with_head(*STACK, "outputs: {y: st}").replace("repeat: 2", f"repeat: {count}")
    d = only(text, "E213")
    check(d, "E213", *line_col, "nodes.st.repeat", f"repeat must be between 1 and 10000, got {count}")


def test_e213_override_index_out_of_range() -> None:
    d = only(with_head(*STACK, "    at:", "      5: {nodes: {n: {block: norm.rms}}}", "outputs: {y: st}"), "E213")
    check(d, "E213", 15, 7, "nodes.st.at.5", "index 5 is out of range for a stack of 2 layers", "valid indices are 0..1")


def test_e213_negative_override_index_out_of_range() -> None:
    d = only(with_head(*STACK, "    at:", "      -3: {nodes: {n: {block: norm.rms}}}", "outputs: {y: st}"), "E213")
    check(d, "E213", 15, 7, "nodes.st.at.-3", "index -3 is out of range")


def test_e213_override_key_not_an_index() -> None:
    d = only(with_head(*STACK, "    at:", "      foo: {nodes: {n: {block: norm.rms}}}", "outputs: {y: st}"), "E213")
    check(d, "E213", 15, 7, "nodes.st.at.foo", "override key 'foo' is not an index")


def test_e213_huge_override_range_is_refused_quickly() -> None:
    """``at: {0-999999999: ...}`` must not build a list of a billion indices (time and memory)."""
    text = with_head(*STACK, "    at:", "      0-999999999: {nodes: {n: {block: norm.rms}}}", "outputs: {y: st}")
    script = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # fail fast instead of swapping
        from ssmgraph.blueprint import load_blueprint
        from ssmgraph.errors import BlueprintError
        try:
            load_blueprint("bp.yaml", text={text!r})
        except BlueprintError as exc:
            print(exc.codes)
        """
    )
    try:
        result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("an override range of a billion indices took more than 30 s")
    assert result.returncode == 0 and "E213" in result.stdout, result.stderr[-2000:]


def test_e213_carry_must_name_body_input_and_output() -> None:
    d = only(with_head(*STACK[:3], "    carry: h", *STACK[3:], "outputs: {y: st}"), "E213")
    check(d, "E213", 10, 12, "nodes.st.carry", "carry 'h' must name both a body input and a body output", "body inputs: x")


def test_e213_share_weights_with_overrides() -> None:
    text = with_head(
        *STACK[:3],
        "    share_weights: true",
        *STACK[3:],
        "    at:",
        "      0: {nodes: {n: {block: norm.rms}}}",
        "outputs: {y: st}",
    )
    d = only(text, "E213")
    check(d, "E213", 16, 7, "st.at", "share_weights reuses one body for every layer")


# ---- E220: shapes ------------------------------------------------------------------------------------


def test_e220_heads_do_not_divide_dim() -> None:
    d = only(with_head(MIX.format("$heads"), "outputs: {y: mix}"), "E220", {"heads": 3})
    check(d, "E220", 7, 35, "mix", "dim 16 is not divisible by heads 3", "inputs are embed: float[batch, seq, 16]")


def test_e220_struct_add_of_different_dims() -> None:
    text = with_head(
        "  lin: {block: struct.linear, in: embed, args: {dim: 4}}",
        "  s: {block: struct.add, in: [embed, lin]}",
        "outputs: {y: s}",
    )
    d = only(text, "E220")
    check(d, "E220", 8, 30, "s", "struct.add needs inputs of one shape", "lin: float[batch, seq, 4]")


def test_e220_token_ids_into_a_norm() -> None:
    d = only(with_head("  z: {block: norm.layer, in: tokens}", "outputs: {y: z}"), "E220")
    check(d, "E220", 7, 30, "z", "expects float features, got int[batch, seq]", "tokens: int[batch, seq]")


def test_e220_downstream_of_a_shape_error_is_not_reported_again() -> None:
    text = with_head(MIX.format("3"), "  n: {block: norm.layer, in: mix}", "outputs: {y: n}")
    assert [d.code for d in diagnostics(text)] == ["E220"]


# ---- E230: share and tie -------------------------------------------------------------------------------

HEAD_LM = "  h: {{block: head.lm, in: embed, args: {{vocab: {vocab}}}, tie: {{{attr}: {target}}}}}"  # the target at col 67


def test_e230_tie_shapes_differ() -> None:
    d = only(with_head(HEAD_LM.format(vocab=11, attr="weight", target="embed.weight"), "outputs: {y: h}"), "E230")
    check(d, "E230", 7, 67, "h.tie.weight", "cannot tie h.weight (11, 16) to embed.weight (10, 16): shapes differ", "same shape")


def test_e230_tie_target_without_parameter() -> None:
    d = only(with_head(HEAD_LM.format(vocab=10, attr="weight", target="embed"), "outputs: {y: h}"), "E230")
    check(d, "E230", 7, 67, "nodes.h.tie.weight", "tie target 'embed' must read node.parameter")


def test_e230_tie_unknown_target_parameter() -> None:
    d = only(with_head(HEAD_LM.format(vocab=10, attr="weight", target="embed.wieght"), "outputs: {y: h}"), "E230")
    check(d, "E230", 7, 67, "h.tie.weight", "embed (embed.token) has no parameter 'wieght'", "did you mean 'weight'?")


def test_e230_tie_unknown_own_parameter() -> None:
    d = only(with_head(HEAD_LM.format(vocab=10, attr="wieght", target="embed.weight"), "outputs: {y: h}"), "E230")
    check(d, "E230", 7, 67, "h.tie.wieght", "h (head.lm) has no parameter 'wieght' to tie", "did you mean 'weight'?")


def test_e230_tie_unknown_node_suggests_the_close_one() -> None:
    d = only(with_head(HEAD_LM.format(vocab=10, attr="weight", target="embd.weight"), "outputs: {y: h}"), "E230")
    check(d, "E230", 7, 67, "h.tie.weight", "'embd.weight' does not name node.parameter", "embed")


def test_e230_share_of_an_input() -> None:
    d = only(with_head("  z: {share: tokens, in: embed}", "outputs: {y: z}"), "E230")
    check(d, "E230", 7, 14, "z.share", "share target 'tokens' is an input, not a block")


def test_e230_share_with_a_different_feature_size() -> None:
    text = with_head(
        "  n: {block: norm.layer, in: embed}",
        "  lin: {block: struct.linear, in: embed, args: {dim: 4}}",
        "  z: {share: n, in: lin}",
        "outputs: {y: z}",
    )
    d = only(text, "E230")
    check(
        d,
        "E230",
        9,
        14,
        "z.share",
        "shares the module of 'n', which reads float[batch, seq, 16], but this call site feeds float[batch, seq, 4]",
    )
