"""How errors are reported: malformed values deep inside a blueprint are located errors (never a
crash); each phase reports all its errors together in file order; rendering; pickling.
"""

from __future__ import annotations

import pickle

import pytest
from error_helpers import FILE, HEAD, MIX, STACK, bp, diagnostics, only, with_head

from ssmgraph.blueprint import load_blueprint
from ssmgraph.blueprint.yamlsafe import load_yaml
from ssmgraph.errors import BlueprintError
from ssmgraph.graph.compile import compile_blueprint

# ---- malformed values deep inside: located errors, never a crash ---------------------------------------------

_AT_STACK = [*STACK, "    at:"]  # lines 7-14; the override is line 15


@pytest.mark.parametrize(
    ("lines", "line"),
    [
        pytest.param(("  z: {block: '', in: embed}", "outputs: {y: z}"), 7, id="empty-block-name"),
        pytest.param((*_AT_STACK, "      1: {nodes: 43}", "outputs: {y: st}"), 15, id="at-nodes-not-a-mapping"),
        pytest.param((*_AT_STACK, "      1: {nodes: {n: {args: 43}}}", "outputs: {y: st}"), 15, id="at-node-args-not-a-mapping"),
        pytest.param(
            (
                *[x.replace("{n: {block: norm.layer, in: x}}", "{n: 43}") for x in _AT_STACK],
                "      1: {nodes: {n: {block: norm.rms}}}",
                "outputs: {y: st}",
            ),
            12,
            id="body-node-not-a-mapping-with-at",
        ),
        pytest.param(
            (
                "  fr:",
                "    repeat: 2",
                "    in: embed",
                "    use: fragments/prenorm.yaml",
                "    at:",
                "      -1: {args: 43}",
                "outputs: {y: fr}",
            ),
            12,
            id="at-fragment-args-not-a-mapping",
        ),
        pytest.param(
            ("outputs: {y: embed}", "taps:", "  t: {at: embed, project: {block: stitch.linear, args: 43}}"),
            9,
            id="tap-project-args-not-a-mapping",
        ),
        pytest.param(("outputs: {y: embed}", "models:", "  v: {outputs: [[1]]}"), 9, id="model-view-output-a-list"),
    ],
)
def test_malformed_values_are_located_errors_not_crashes(lines: tuple[str, ...], line: int) -> None:
    text = with_head(*lines)
    try:
        compile_blueprint(load_blueprint(FILE, text=text))
    except BlueprintError as exc:
        found = exc.diagnostics
    else:
        pytest.fail("no error reported")
    assert all(d.mark is not None for d in found), [d.render() for d in found]
    assert line in [d.mark.line for d in found if d.mark], [d.render() for d in found]


# ---- phases: all errors together, in file order -------------------------------------------------------------


def test_resolve_phase_reports_every_error_sorted_by_position() -> None:
    text = bp(
        "ssmgraph: 1",  # 1
        "bogus: 1",  # 2
        "params: {d: $x}",  # 3
        *HEAD[2:5],  # 4-6
        "  embed: {block: embed.token, in: tokens, args: {vocab: 10, dim: 8}}",  # 7
        "  a: {block: 3, in: embed}",  # 8
        "  forward: {block: norm.layer, in: embed}",  # 9
        "outputs: {y: a}",  # 10
    )
    found = diagnostics(text)
    assert [(d.code, d.mark.line, d.mark.col) for d in found if d.mark] == [
        ("E110", 2, 1),
        ("E121", 3, 13),
        ("E112", 8, 14),
        ("E200", 9, 3),
    ]
    rendered = str(BlueprintError(found))
    assert rendered.endswith("4 errors")
    assert rendered.index("bp.yaml:2:1: error[E110]") < rendered.index("bp.yaml:9:3: error[E200]")


def test_check_phase_reports_every_error_sorted_by_position() -> None:
    text = with_head(
        "  c: {block: ffn.mlp, in: embed, args: {hiden: 3}}",  # 7
        "  a: {block: mix.atention, in: embed}",  # 8
        "  b: {block: norm.layer, in: nope}",  # 9
        "  h: {block: head.lm, in: embed}",  # 10
        "outputs: {y: a, z: b, w: c, v: h}",
    )
    found = diagnostics(text)
    assert [(d.code, d.mark.line) for d in found if d.mark] == [("E202", 7), ("E201", 8), ("E210", 9), ("E204", 10)]


def test_shape_phase_reports_every_error() -> None:
    text = with_head(
        MIX.format("3"),  # 7
        "  lin: {block: struct.linear, in: embed, args: {dim: 4}}",  # 8
        "  s: {block: struct.add, in: [embed, lin]}",  # 9
        "outputs: {y: mix, z: s}",
    )
    found = diagnostics(text)
    assert [(d.code, d.mark.line) for d in found if d.mark] == [("E220", 7), ("E220", 9)]


def test_rendering_has_position_snippet_caret_and_help() -> None:
    d = only(with_head("  mix: {block: mix.atention, in: embed}", "outputs: {y: mix}"), "E201")
    lines = d.render().splitlines()
    assert lines[0] == "bp.yaml:7:16: error[E201]: mix.block: unknown block 'mix.atention'"
    assert lines[1] == "  7 |   mix: {block: mix.atention, in: embed}"
    assert lines[2] == "    |                ^"
    assert lines[3].startswith("  help: did you mean 'mix.attention'")


def test_blueprint_error_pickles() -> None:
    with pytest.raises(BlueprintError) as info:
        load_yaml("a: [", "x.yaml")
    copy = pickle.loads(pickle.dumps(info.value))
    assert copy.diagnostics == info.value.diagnostics and str(copy) == str(info.value)
