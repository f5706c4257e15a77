"""The command line's catalogue: ``blocks`` (listing, search, one block's parameters) and ``plugins``."""

from __future__ import annotations

import json
import re
from typing import Any

from typer.testing import CliRunner

from ssmgraph.cli import app
from ssmgraph.registry.plugins import get_registry

WIDE = {"COLUMNS": "200", "NO_COLOR": "1"}


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=WIDE)


def run_json(*args: str) -> Any:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


def test_blocks_finds_part_of_a_name_as_its_help_says() -> None:
    assert "mix.attention" in run("blocks", "attention").stdout


def test_blocks_lists_every_registered_block() -> None:
    result = run("blocks")
    assert result.exit_code == 0
    for name in get_registry().blocks:
        assert name in result.stdout
    assert f"{len(get_registry().blocks)} blocks" in result.stdout


def test_blocks_pattern() -> None:
    result = run("blocks", "norm.*")
    assert result.exit_code == 0
    assert "norm.layer" in result.stdout and "norm.rms" in result.stdout and "mix.attention" not in result.stdout
    substring = run("blocks", "attention")
    assert (
        "mix.attention" in substring.stdout and "mix.cross_attention" in substring.stdout and "norm.layer" not in substring.stdout
    )


def test_blocks_exact_name_shows_parameters() -> None:
    result = run("blocks", "mix.attention")
    assert result.exit_code == 0
    out = result.stdout
    assert out.startswith("mix.attention (mix, from ssmgraph)")
    for param in ("heads", "kv_heads", "causal", "rope", "rope_base", "bias", "dropout"):
        assert re.search(rf"│ {param}\s", out), param
    assert "must divide dim" in out and "Vaswani" in out


def test_blocks_exact_name_required_parameter() -> None:
    out = run("blocks", "head.lm").stdout
    assert re.search(r"│ vocab\s+│ int\s+│ required", out), out


def test_blocks_json() -> None:
    data = run_json("blocks")
    assert isinstance(data, list) and [d["name"] for d in data] == sorted(get_registry().blocks)
    for entry in data:
        assert {"name", "role", "plugin", "params", "doc", "inputs", "capabilities"} <= set(entry)
        assert isinstance(entry["params"], list)
        for param in entry["params"]:
            assert {"name", "type", "required", "default", "doc", "range"} <= set(param)
    by_name = {d["name"]: d for d in data}
    assert by_name["mix.attention"]["role"] == "mix" and by_name["mix.attention"]["plugin"] == "ssmgraph"
    heads = next(p for p in by_name["mix.attention"]["params"] if p["name"] == "heads")
    assert heads == {**heads, "type": "int", "required": False, "default": 4, "range": "[1, inf]"}
    vocab = next(p for p in by_name["head.lm"]["params"] if p["name"] == "vocab")
    assert vocab["required"] is True and vocab["default"] is None


def test_blocks_json_pattern_and_exact() -> None:
    assert [d["name"] for d in run_json("blocks", "norm.*")] == ["norm.layer", "norm.rms"]
    assert [d["name"] for d in run_json("blocks", "struct.add")] == ["struct.add"]
    assert run_json("blocks", "zzzz") == []


def test_plugins_json() -> None:
    data = run_json("plugins")
    assert isinstance(data, list) and data
    for record in data:
        assert {"name", "package", "version", "status", "error", "blocks", "entry_point"} <= set(record)
    by_name = {r["name"]: r for r in data}
    assert by_name["ssmgraph.blocks.attention"]["status"] == "loaded"
    assert by_name["ssmgraph.blocks.attention"]["blocks"] == ["mix.attention", "mix.cross_attention"]
    listed = [b for r in data for b in r["blocks"]]
    assert sorted(listed) == sorted(get_registry().blocks), "every block is attributed to exactly one plugin"


def test_plugins_table() -> None:
    result = run("plugins")
    assert result.exit_code == 0
    assert "blocks.attention" in result.stdout and "loaded" in result.stdout
    assert "mix.attention, mix.cross_attention" in result.stdout
