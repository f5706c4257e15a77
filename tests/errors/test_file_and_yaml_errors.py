"""Error codes of reading a blueprint: E100 (the file cannot be read) and E101-E104 (YAML).

Each test asserts the code, the exact position (line and column of the mark), the node
path, a key part of the message and of the help. Bad blueprints are built with the helpers
of error_helpers.py.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
from error_helpers import FILE, bp, check, file_errors, only, with_head

import ssmgraph
from ssmgraph.errors import BlueprintError

# ---- E100: the file cannot be read ----------------------------------------------------------


def test_e100_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    (d,) = file_errors(missing)
    check(d, "E100", 1, 1, "", "no such file", "check the path", file=str(missing))


def test_e100_directory(tmp_path: Path) -> None:
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    (d,) = file_errors(folder)
    check(d, "E100", 1, 1, "", "is a directory", file=str(folder))


def test_e100_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "model.yaml"
    path.write_bytes(b"ssmgraph: 1\n\x00\x01\x02")
    (d,) = file_errors(path)
    check(d, "E100", 1, 1, "", "binary", file=str(path))


def test_e100_not_utf8_points_at_the_line_of_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"ssmgraph: 1\nname: caf\xe9\n")
    (d,) = file_errors(path)
    check(d, "E100", 2, 1, "", "not UTF-8", file=str(path))
    assert "0xe9" in d.message


def test_e100_too_large(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"# " + b"x" * (1 << 20) + b"\n")
    (d,) = file_errors(path)
    check(d, "E100", 1, 1, "", "limited to", file=str(path))


def test_e100_unknown_shipped_name_suggests_the_close_one() -> None:
    with pytest.raises(BlueprintError) as info:
        ssmgraph.build("gtp")
    (d,) = info.value.diagnostics
    check(d, "E100", 1, 1, "", "'gtp'", "did you mean 'gpt'", file="gtp")


# ---- E101-E104: YAML ---------------------------------------------------------------------------


def test_e101_yaml_syntax() -> None:
    text = bp("ssmgraph: 1", "nodes: {a: [1, 2}")
    d = only(text, "E101")
    check(d, "E101", 2, 17, "", "expected ',' or ']'")


def test_e101_tab_indentation_has_a_hint() -> None:
    d = only(bp("ssmgraph: 1", "params:", "\td: 3"), "E101")
    check(d, "E101", 3, 1, "", "'\\t'", "tabs")


def test_e101_unquoted_expression_in_flow_map_has_a_hint() -> None:
    d = only(with_head("  f: {block: ffn.mlp, in: embed, args: {hidden: ${d} * 4}}", "outputs: {y: f}"), "E101")
    check(d, "E101", 7, 50, "", "flow mapping", "quote expressions")


def test_e102_duplicate_key() -> None:
    d = only(bp("ssmgraph: 1", "params:", "  d: 1", "  d: 2"), "E102")
    check(d, "E102", 4, 3, "", "duplicate key 'd' (first defined at line 3)", "remove or rename")


def test_e102_duplicate_node_name() -> None:
    d = only(with_head("  embed: {block: norm.layer, in: tokens}", "outputs: {y: embed}"), "E102")
    check(d, "E102", 7, 3, "", "duplicate key 'embed' (first defined at line 6)")


def test_e103_python_tag_is_refused() -> None:
    d = only(bp("ssmgraph: 1", "params: !!python/object/apply:os.system ['echo pwned']"), "E103")
    check(d, "E103", 2, 9, "", "python/object/apply:os.system", "remove the tag")


def test_e103_local_tag_is_refused() -> None:
    d = only(bp("ssmgraph: 1", "params: {d: !foo 3}"), "E103")
    check(d, "E103", 2, 13, "", "tag '!foo' is not allowed")


def test_e103_complex_key_is_refused() -> None:
    d = only(bp("ssmgraph: 1", "? [a, b]", ": 1"), "E103")
    check(d, "E103", 2, 3, "", "mapping keys must be plain scalars")


def test_e103_alias_bomb_is_refused_quickly() -> None:
    names = "abcdefgh"
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for prev, cur in itertools.pairwise(names):
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    start = time.perf_counter()
    d = only(bp(*lines), "E103")
    assert time.perf_counter() - start < 5
    assert "alias bomb" in d.message
    assert d.mark is not None and d.mark.file == FILE and d.mark.line == 1


def test_e103_deep_nesting() -> None:
    d = only(bp("a: " + "[" * 100 + "]" * 100), "E103")
    check(d, "E103", 1, 68, "", "nested deeper than 64")  # the 65th bracket


def test_e103_very_deep_nesting_is_no_recursion_error() -> None:
    d = only(bp("a: " + "[" * 5000 + "]" * 5000), "E103")
    check(d, "E103", 1, 1, "", "nested too deeply")


@pytest.mark.parametrize(
    ("literal", "message"),
    [
        ("99999999999999999999", "does not fit in 64 bits"),
        ("9223372036854775808", "does not fit in 64 bits"),
        ("-9223372036854775809", "does not fit in 64 bits"),
        ("0xFFFFFFFFFFFFFFFFFF", "does not fit in 64 bits"),
        ("1" * 40, "too large"),
    ],
)
def test_e104_huge_integers(literal: str, message: str) -> None:
    d = only(bp("ssmgraph: 1", f"params: {{big: {literal}}}"), "E104")
    check(d, "E104", 2, 15, "", message)
