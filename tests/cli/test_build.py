"""``ssmgraph build`` end to end, and how user errors look (exit 2, file:line:col, no traceback)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import ssmgraph
from ssmgraph.blueprint import builtin_blueprints
from ssmgraph.cli import app

SHIPPED = sorted(builtin_blueprints())
WIDE = {"COLUMNS": "200", "NO_COLOR": "1"}


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=WIDE)


def run_json(*args: str) -> Any:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


def needs_installed_blocks(name: str) -> None:
    """Skip a shipped blueprint whose blocks are not registered in this environment."""
    try:
        ssmgraph.build(name)
    except ssmgraph.BlueprintError as error:
        if set(error.codes) == {"E201"}:
            pytest.skip(f"{name} needs blocks that are not registered: {error.diagnostics[0].message}")


# ---- build ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_build_each_shipped_blueprint(name: str) -> None:
    needs_installed_blocks(name)
    result = run("build", name)
    assert result.exit_code == 0, result.stderr
    assert "parameters" in result.stdout and "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("name", SHIPPED)
def test_build_json_structure(name: str) -> None:
    needs_installed_blocks(name)
    data = run_json("build", name)
    assert {"name", "parameters", "inputs", "outputs", "nodes", "taps", "tied", "supports_step"} <= set(data)
    assert data["name"] == name and data["model"] is None
    assert isinstance(data["parameters"], int) and data["parameters"] > 0
    model = ssmgraph.build(name)
    assert data["parameters"] == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    paths = [node["path"] for node in data["nodes"]]
    assert paths == list(model.nodes)
    for node in data["nodes"]:
        assert {"path", "block", "plugin", "inputs", "shape", "parameters"} <= set(node)
        assert node["block"] == model.nodes[node["path"]].block
        assert node["shape"] == list(model.nodes[node["path"]].out_type.shape)
        assert all(i in paths or i in data["inputs"] for i in node["inputs"])
    assert set(data["outputs"]) == set(model.outputs)
    for shape in data["outputs"].values():
        assert shape[0] == "batch" and isinstance(shape[-1], int)


def test_build_json_of_gpt_in_detail() -> None:
    data = run_json("build", "gpt", "--set", "layers=2")
    assert data["inputs"] == {"tokens": {"dtype": "int", "shape": ["batch", "seq"]}}
    assert data["outputs"] == {"logits": ["batch", "seq", 256]}
    assert data["tied"] == {"head.weight": "embed.weight"}
    assert data["taps"] == {"resid.0": "blocks.0.out", "resid.1": "blocks.1.out"}
    assert data["supports_step"] is True
    nodes = {n["path"]: n for n in data["nodes"]}
    assert nodes["blocks.1.mix"]["block"] == "mix.attention"
    assert nodes["blocks.1.mix"]["inputs"] == ["blocks.1.norm1"]
    assert nodes["head"]["parameters"] == 0, "the tied head weight is counted at the embedding"
    assert nodes["embed"]["parameters"] == 256 * 128


def test_build_json_node_counts_and_tap_projections_add_up_to_the_total() -> None:
    data = run_json("build", "pair")
    assert data["tap_parameters"] > 0
    assert sum(n["parameters"] for n in data["nodes"]) + data["tap_parameters"] == data["parameters"]


def test_build_set_overrides() -> None:
    data = run_json("build", "gpt", "--set", "d_model=64", "-s", "layers=1", "--set", "vocab=50", "--set", "heads=2")
    assert data["outputs"]["logits"] == ["batch", "seq", 50]
    assert [n["path"] for n in data["nodes"] if n["path"].startswith("blocks.")][-1].startswith("blocks.0.")
    assert {n["path"]: n["shape"] for n in data["nodes"]}["blocks.0.out"] == ["batch", "seq", 64]
    assert data["parameters"] == sum(
        p.numel()
        for p in {id(p): p for p in ssmgraph.build("gpt", d_model=64, layers=1, vocab=50, heads=2).parameters()}.values()
    )


def test_a_set_value_of_the_wrong_kind_is_named_at_the_parameter() -> None:
    result = run("build", "gpt", "--set", "d_model=abc")
    assert result.exit_code == 2 and "--set d_model='abc' does not fit the parameter, whose default is 128" in result.stderr
    assert result.stderr.count("error[") == 1  # the default stands in: no follow-on errors
    assert run("build", "gpt", "--set", "d_model=$vocab // 4", "--json").exit_code == 0  # expressions stay allowed


def test_build_set_values_are_read_as_yaml() -> None:
    data = run_json("build", "lstm", "--set", "hidden=null", "--set", "layers=1")
    lstm = next(n for n in data["nodes"] if n["path"] == "lstm")
    assert lstm["shape"] == ["batch", "seq", 128]


@pytest.mark.parametrize(("view", "output"), [("transformer", "transformer.logits"), ("lstm", "lstm.logits")])
def test_build_model_views(view: str, output: str) -> None:
    data = run_json("build", "pair", "--model", view, "--set", "layers=1")
    assert data["model"] == view
    assert list(data["outputs"]) == [output]
    assert all(tap.startswith(view + ".") for tap in data["taps"])
    other = "lstm" if view == "transformer" else "tf"
    assert not any(n["path"].startswith(other + ".") or n["path"] == other + "_head" for n in data["nodes"])
    assert any(n["path"] == "embed" for n in data["nodes"]), "each view keeps the shared embedding"


def test_build_out_then_load_gives_the_same_model(tmp_path: Path) -> None:
    out = tmp_path / "run" / "gpt"
    result = run("build", "gpt", "--set", "d_model=32", "--set", "layers=1", "--set", "heads=2", "--seed", "3", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert f"model saved to {out}" in result.stderr.replace("\n", "")
    assert {p.name for p in out.iterdir()} >= {"blueprint.yaml", "model.safetensors", "meta.json"}
    loaded = ssmgraph.load(out)
    torch.manual_seed(3)
    built = ssmgraph.build("gpt", d_model=32, layers=1, heads=2)
    tokens = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    built.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), built(tokens), rtol=0, atol=0)
    assert loaded.state_dict().keys() == built.state_dict().keys()
    assert loaded.get_parameter("head.weight") is loaded.get_parameter("embed.weight"), "the tie survives save and load"


def test_build_out_with_a_model_view(tmp_path: Path) -> None:
    out = tmp_path / "lstm_view"
    result = run(
        "build", "pair", "--model", "lstm", "--set", "layers=1", "--set", "d_model=16", "--set", "heads=2", "--out", str(out)
    )
    assert result.exit_code == 0, result.stderr
    model = ssmgraph.load(out)
    assert model.view == "lstm" and list(model.outputs) == ["lstm.logits"]


def test_build_graph_dot_and_mermaid(tmp_path: Path) -> None:
    dot, mmd = tmp_path / "g.dot", tmp_path / "g.mmd"
    assert run("build", "lstm", "--graph", str(dot)).exit_code == 0
    assert run("build", "lstm", "--graph", str(mmd)).exit_code == 0
    dot_text, mmd_text = dot.read_text(), mmd.read_text()
    assert dot_text.startswith('digraph "lstm" {') and dot_text.rstrip().endswith("}")
    for edge in ("tokens -> embed;", "embed -> lstm;", "lstm -> head;", "head -> out_logits;"):
        assert edge in dot_text
    assert 'label="lstm\\nmix.lstm\\nbatch×seq×128"' in dot_text
    assert mmd_text.startswith("flowchart TD")
    for edge in ("tokens --> embed", "embed --> lstm", "lstm --> head", "head --> out_logits"):
        assert edge in mmd_text


def test_build_graph_uses_safe_ids_for_dotted_paths(tmp_path: Path) -> None:
    dot = tmp_path / "gpt.dot"
    assert run("build", "gpt", "--set", "layers=1", "--graph", str(dot)).exit_code == 0
    text = dot.read_text()
    assert "blocks_0_norm1 -> blocks_0_mix;" in text
    ids = re.findall(r"^\s+([^\s\[]+) \[", text, re.MULTILINE)
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", i) for i in ids), ids


def test_build_graph_ids_never_read_as_keywords(tmp_path: Path) -> None:
    (tmp_path / "kw.yaml").write_text(
        textwrap.dedent("""
        ssmgraph: 1
        inputs: {graph: {dtype: float32, shape: [batch, seq, 4]}}
        nodes:
          node: {block: norm.layer, in: graph}
          end: {block: norm.layer, in: node}
          end_: {block: norm.rms, in: end}
        outputs: {y: end_}
    """)
    )
    dot, mmd = tmp_path / "kw.dot", tmp_path / "kw.mmd"
    assert run("build", str(tmp_path / "kw.yaml"), "--graph", str(dot)).exit_code == 0
    assert run("build", str(tmp_path / "kw.yaml"), "--graph", str(mmd)).exit_code == 0
    assert "graph_ -> node_;" in dot.read_text() and "node_ --> end_" in mmd.read_text()
    assert "end_ --> end__2" in mmd.read_text()  # the node named end_ keeps an id of its own
    missing = run("build", "lstm", "--graph", str(tmp_path / "nodir" / "g.dot"))
    assert missing.exit_code == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "d.mmd").mkdir()
    folder = run("build", "lstm", "--graph", str(tmp_path / "d.mmd"))
    assert folder.exit_code == 2 and "is a folder" in folder.stderr


def test_build_graph_unknown_format_is_a_user_error(tmp_path: Path) -> None:
    result = run("build", "lstm", "--graph", str(tmp_path / "g.txt"))
    assert result.exit_code == 2
    assert "unknown format '.txt'" in result.stderr and "Traceback" not in result.stderr


# ---- user errors ---------------------------------------------------------------------------------------


def test_user_error_exits_2_with_file_line_col(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "ssmgraph: 1\n"
        "inputs:\n"
        "  tokens: {dtype: int64, shape: [batch, seq]}\n"
        "nodes:\n"
        "  embed: {block: embed.token, in: tokens, args: {vocab: 10, dim: 8}}\n"
        "  mix: {block: mix.atention, in: embed}\n"
        "  head: {block: head.lm, in: mx, args: {vocab: 10}}\n"
        "outputs: {logits: head}\n"
    )
    result = run("build", str(path))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert f"{path}:6:16: error[E201]: mix.block: unknown block 'mix.atention'" in result.stderr
    assert f"{path}:7:30: error[E210]: head.in: no input or node named 'mx'" in result.stderr
    assert "help: did you mean 'mix.attention'" in result.stderr
    assert "2 errors" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("build", "gpt", "--set", "nope=3"), r"gpt\.yaml:\d+:\d+: error\[E121\]: params: no parameter 'nope'"),
        (("build", "gpt", "--set", "heads=3"), r"gpt\.yaml:\d+:\d+: error\[E220\]"),
        (("build", "gpt", "--set", "d_model"), r"error\[E112\]: --set: --set 'd_model' must read name=value"),
        (("build", "pair", "--model", "lstn"), r"error\[E210\]: --model: .*did you mean 'lstm'"),
        (("build", "no_such_blueprint"), r"no_such_blueprint:1:1: error\[E100\]"),
        (("blocks", "zzzz"), r"no block matches 'zzzz'"),
    ],
)
def test_user_errors_exit_2_without_traceback(args: tuple[str, ...], expected: str) -> None:
    result = run(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert re.search(expected, result.stderr, re.DOTALL), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_real_subprocess_build_json() -> None:
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "ssmgraph", "build", "gpt", "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["name"] == "gpt" and data["outputs"] == {"logits": ["batch", "seq", 256]}
    assert len([n for n in data["nodes"] if n["path"].endswith(".mix")]) == 4


def test_real_subprocess_user_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("ssmgraph: 1\nnodes: {a: [1, 2}\n")
    result = subprocess.run(
        [sys.executable, "-m", "ssmgraph", "build", str(path)], check=False, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert f"{path}:2:17: error[E101]" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
