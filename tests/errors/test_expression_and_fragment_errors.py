"""Error codes of expressions, params and fragments: E120/E121 and E130, and how errors inside a
fragment are located.

Each test asserts the code, the exact position (line and column of the mark), the node
path, a key part of the message and of the help. Bad blueprints are built with the helpers
of error_helpers.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from error_helpers import FILE, HEAD, MIX, bp, check, diagnostics, file_errors, only, with_head

import ssmgraph
from ssmgraph.blueprint import load_blueprint
from ssmgraph.errors import BlueprintError

# ---- E120/E121: expressions and params -----------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("\"$__import__('os').system('true')\"", "only these functions may be called"),
        ("'$heads.real'", "attribute is not allowed"),
        ("'$heads.__class__'", "attribute is not allowed"),
        ("'$d[0]'", "subscript is not allowed"),
        ("'$(lambda: 1)()'", "only these functions may be called"),
        ("'$[x for x in d]'", "not allowed"),
        ("'$2**10**10'", "too large"),
        ("'$heads +'", "cannot parse"),
        ("'$heads // 0'", "division by zero"),
        ("'$\"a\" * 10'", "strings can only be joined"),
    ],
)
def test_e120_bad_expression(expression: str, message: str) -> None:
    start = time.perf_counter()
    d = only(with_head(MIX.format(expression), "outputs: {y: mix}"), "E120")
    assert time.perf_counter() - start < 2
    check(d, "E120", 7, 56, "nodes.mix.args.heads", message, "expressions use")


def test_e120_too_long_expression() -> None:
    d = only(bp("ssmgraph: 1", "params: {d: 2, e: '$" + "1+" * 300 + "1'}", *HEAD[2:], "outputs: {y: embed}"), "E120")
    check(d, "E120", 2, 19, "params.e", "longer than 500 characters")


def test_e120_deeply_nested_expression_is_no_recursion_error() -> None:
    """500 characters of ``------1`` parse fine but must not overflow the evaluator's stack."""
    text = bp("ssmgraph: 1", "params: {d: 2, e: '$" + "-" * 498 + "1'}", *HEAD[2:], "outputs: {y: embed}")
    try:  # a RecursionError here is a crash, not a located error
        blueprint = load_blueprint(FILE, text=text)
    except BlueprintError as exc:
        (d,) = exc.diagnostics
        check(d, "E120", 2, 19, "params.e", "")
    else:
        assert blueprint.params["e"] == 1


def test_e121_unknown_parameter_in_expression() -> None:
    d = only(with_head(MIX.format("$head"), "outputs: {y: mix}"), "E121")
    check(d, "E121", 7, 56, "nodes.mix.args.heads", "unknown parameter 'head'", "did you mean 'heads'?")


def test_e121_dunder_names_are_unknown_parameters() -> None:
    d = only(with_head(MIX.format("$__builtins__"), "outputs: {y: mix}"), "E121")
    check(d, "E121", 7, 56, "nodes.mix.args.heads", "unknown parameter '__builtins__'")


def test_e121_set_override_of_an_unknown_name() -> None:
    d = only(with_head("outputs: {y: embed}"), "E121", {"haeds": 2})
    check(d, "E121", 2, 1, "params", "no parameter 'haeds' to override (--set)", "did you mean 'heads'?")


def test_e121_build_keyword_of_an_unknown_name() -> None:
    with pytest.raises(BlueprintError) as info:
        ssmgraph.build("gpt", d_modle=64)
    (d,) = info.value.diagnostics
    assert d.code == "E121" and "d_modle" in d.message and "did you mean 'd_model'?" in d.help
    assert d.mark is not None and d.mark.file.endswith("gpt.yaml")


# ---- E130: fragments ------------------------------------------------------------------------------


def _write(path: Path, *lines: str) -> Path:
    path.write_text(bp(*lines), encoding="utf-8")
    return path


def test_e130_missing_fragment(tmp_path: Path) -> None:
    main = _write(tmp_path / "main.yaml", *HEAD, "  g:", "    use: nothere.yaml", "    in: embed", "outputs: {y: g}")
    found = file_errors(main)
    assert [d.code for d in found] == ["E130"]
    check(
        found[0], "E130", 8, 10, None, "fragment 'nothere.yaml' not found", "relative to the blueprint's folder", file=str(main)
    )
    assert found[0].path == "nodes.g.use", "the path names the node's 'use' key once"


def test_e130_use_needs_a_yaml_path() -> None:
    d = only(with_head("  g: {use: notyaml, in: embed}", "outputs: {y: g}"), "E130")
    check(d, "E130", 7, 12, None, "'use' takes the path of a fragment file (.yaml), got 'notyaml'")


def test_e130_fragment_loop(tmp_path: Path) -> None:
    frag = [
        "ssmgraph: 1",
        "kind: fragment",
        "inputs: [x]",
        "nodes:",
        "  inner:",
        "    use: {}",
        "    in: x",
        "outputs: {{x: inner}}",
    ]
    a = _write(tmp_path / "a.yaml", *[line.format("b.yaml") for line in frag])
    _write(tmp_path / "b.yaml", *[line.format("a.yaml") for line in frag])
    main = _write(tmp_path / "main.yaml", *HEAD, "  g:", "    use: a.yaml", "    in: embed", "outputs: {y: g}")
    start = time.perf_counter()
    found = file_errors(main)
    assert time.perf_counter() - start < 5
    assert [d.code for d in found] == ["E130"]
    (d,) = found
    assert "fragments use each other in a loop: a.yaml -> b.yaml -> a.yaml" in d.message
    assert d.mark is not None and Path(d.mark.file).resolve() == (tmp_path / "b.yaml").resolve()
    assert (d.mark.line, d.mark.col) == (6, 10)
    via = [(Path(m.file).resolve(), m.line, m.col) for m in d.mark.via]
    assert via == [(main.resolve(), 8, 10), (a.resolve(), 6, 10)]
    assert "note: used from" in d.render()
    assert not d.path.startswith(".") and "use.use" not in d.path, f"malformed node path {d.path!r}"


def test_e112_fragment_args_must_be_a_mapping() -> None:
    text = with_head("  g:", "    use: fragments/prenorm.yaml", "    in: embed", "    args: 43", "outputs: {y: g}")
    found = diagnostics(text)  # a TypeError here is a crash, not a located error
    assert [d.code for d in found] == ["E112"], [d.render() for d in found]
    check(found[0], "E112", 10, 11, None, "mapping")


def test_e130_args_override_needs_a_fragment() -> None:
    text = with_head(
        "  st:",
        "    repeat: 2",
        "    in: embed",
        "    body: {inputs: [x], nodes: {n: {block: norm.layer, in: x}}, outputs: {x: n}}",
        "    at:",
        "      0: {args: {eps: 1}}",
        "outputs: {y: st}",
    )
    d = only(text, "E130")
    check(d, "E130", 12, 10, "nodes.st.at.0", "'args' overrides need a body that uses a fragment", "override nodes instead")


def test_fragment_syntax_error_is_located_in_the_fragment_and_notes_the_use_site(tmp_path: Path) -> None:
    _write(
        tmp_path / "syn.yaml",
        "ssmgraph: 1",
        "kind: fragment",
        "inputs: [x]",
        "nodes:",
        "  n: {block: norm.layer, in: x",
        "outputs: {x: n}",
    )
    main = _write(tmp_path / "main.yaml", *HEAD, "  g:", "    use: syn.yaml", "    in: embed", "outputs: {y: g}")
    (d,) = file_errors(main)
    assert d.code == "E101"
    assert d.mark is not None and Path(d.mark.file).resolve() == (tmp_path / "syn.yaml").resolve()
    assert (d.mark.line, d.mark.col) == (6, 8)
    via = [(Path(m.file).resolve(), m.line, m.col) for m in d.mark.via]
    assert via == [(main.resolve(), 8, 10)], "the error should say which 'use:' loaded the broken fragment"


def test_shipped_fragment_blocks_are_located_in_the_fragment_with_the_use_site(tmp_path: Path) -> None:
    main = _write(
        tmp_path / "main.yaml",
        *HEAD,
        "  blocks:",
        "    repeat: 2",
        "    in: embed",
        "    use: fragments/prenorm.yaml",
        "    args: {mixer: mix.atention}",
        "outputs: {y: blocks}",
    )
    found = file_errors(main)
    assert {d.code for d in found} == {"E201"}
    d = found[0]
    assert d.mark is not None and d.mark.file.endswith("prenorm.yaml") and (d.mark.line, d.mark.col) == (15, 16)
    assert [(Path(m.file).resolve(), m.line, m.col) for m in d.mark.via] == [(main.resolve(), 10, 10)]
    assert "did you mean 'mix.attention'" in d.help
    assert len(found) == 1, "one mistake in a repeated body is reported once: " + "; ".join(x.path for x in found)


def test_a_bad_expression_in_an_input_shape_is_one_error_not_two(tmp_path) -> None:
    path = tmp_path / "shape.yaml"
    path.write_text(
        "ssmgraph: 1\nparams: {d: 8}\ninputs:\n  x: {dtype: float, shape: [batch, seq, $d * nope]}\n"
        "nodes:\n  e: {block: embed.linear, in: x, args: {dim: 4}}\noutputs: {y: e}\n"
    )
    with pytest.raises(BlueprintError) as info:
        load_blueprint(path)
    codes = [d.code for d in info.value.diagnostics]
    assert codes == ["E121"], [str(d) for d in info.value.diagnostics]  # before: also an E112 'dimension <object ...>'
