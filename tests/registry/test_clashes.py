"""A clash is not an outage: a name two plugins provide is reported, every other command works,
and only a use of that name is refused (E300, naming both providers and the switch)."""

from __future__ import annotations

import json

import pytest
from fake_plugins import fake_distribution, good_block
from typer.testing import CliRunner

from ssmgraph.blueprint import load_blueprint
from ssmgraph.cli import app
from ssmgraph.errors import BlueprintError
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.plugins import PluginError, Registry
from ssmgraph.registry.specs import MergeMethodSpec, TaskSpec

WIDE = {"COLUMNS": "200", "NO_COLOR": "1"}  # warnings on one line


def _uses(block: str) -> str:
    return f"""
ssmgraph: 1
inputs: {{x: {{dtype: float32, shape: [batch, seq, 4]}}}}
nodes:
  n: {{block: {block}, in: x}}
outputs: {{y: n}}
"""


@pytest.fixture
def clash(site):
    """An installed plugin that provides a second ``norm.layer``."""
    fake_distribution(site, "ssmgraph-clash", "clash_plugin", good_block("norm.layer"))
    return site


def test_a_clash_is_a_warning_naming_both_providers(clash) -> None:
    registry = Registry()  # before: PluginError, and every command stopped
    (warning,) = [p for p in registry.problems if "provided twice" in p]
    assert "block 'norm.layer' is provided twice" in warning
    assert "by ssmgraph.blocks.norm (ssmgraph" in warning.split("and by")[0] and "clash_plugin (ssmgraph-clash 0.3.1)" in warning
    assert "SSMGRAPH_DISABLE_PLUGINS=clash_plugin" in warning
    assert "norm.layer" not in registry.blocks and registry.get("norm.rms") is not None  # neither provider wins
    assert registry.plugins["clash_plugin"].clashes == ["norm.layer"] == registry.plugins["ssmgraph.blocks.norm"].clashes
    assert registry.plugins["clash_plugin"].status == "loaded" and registry.plugins["clash_plugin"].blocks == ["norm.layer"]


def test_a_blueprint_naming_a_clashing_block_is_refused_where_it_names_it(clash) -> None:
    registry = Registry()
    with pytest.raises(BlueprintError) as info:
        compile_blueprint(load_blueprint("x.yaml", text=_uses("norm.layer")), registry=registry)
    (d,) = info.value.diagnostics
    assert (d.code, d.mark.line, d.path) == ("E300", 5, "n.block")
    assert "block 'norm.layer' is provided twice: by ssmgraph.blocks.norm (ssmgraph" in d.message
    assert "and by clash_plugin (ssmgraph-clash 0.3.1)" in d.message
    assert "SSMGRAPH_DISABLE_PLUGINS=clash_plugin" in d.help
    compile_blueprint(load_blueprint("x.yaml", text=_uses("norm.rms")), registry=registry)  # the rest builds


def test_disabling_one_provider_ends_the_clash(clash, monkeypatch) -> None:
    monkeypatch.setenv("SSMGRAPH_DISABLE_PLUGINS", "clash_plugin")
    registry = Registry()
    assert registry.get("norm.layer").plugin == "ssmgraph" and not any("provided twice" in p for p in registry.problems)


def test_commands_keep_working_during_a_clash(clash) -> None:
    runner = CliRunner()
    version = runner.invoke(app, ["--version"], env=WIDE)
    assert version.exit_code == 0 and "ssmgraph-clash-0.3.1" in version.stdout  # before: error[E300], exit 2
    listed = runner.invoke(app, ["plugins", "--json"], env=WIDE)
    assert listed.exit_code == 0, listed.output
    records = {r["name"]: r for r in json.loads(listed.stdout)}
    assert records["clash_plugin"]["clashes"] == ["norm.layer"] and records["clash_plugin"]["blocks"] == ["norm.layer"]
    built = runner.invoke(app, ["build", "gpt", "--set", "layers=1"], env=WIDE)  # gpt's norms are norm.layer
    assert built.exit_code == 2 and "Traceback" not in built.output
    assert "warning: block 'norm.layer' is provided twice" in built.stderr
    assert "error[E300]: norm_f.block: block 'norm.layer' is provided twice" in built.stderr
    assert "SSMGRAPH_DISABLE_PLUGINS=clash_plugin" in built.stderr


class _Twin:
    """A second ``parity`` task and a second ``linear`` merge method."""

    @hookimpl
    def ssmgraph_tasks(self):
        return [TaskSpec(name="parity", doc="Another parity.", params=(), factory=dict)]

    @hookimpl
    def ssmgraph_merge_methods(self):
        return [MergeMethodSpec(name="linear", doc="Another linear.", params=(), run="ssmgraph_twin.merge:run")]


def test_task_and_merge_method_clashes_refuse_only_their_use() -> None:
    registry = Registry(autoload=False)
    registry.register(_Twin(), "twin", "ssmgraph-twin", "0.2")
    registry.collect()
    assert registry.task("copying") is not None and registry.merge_method("ties") is not None
    assert any("task 'parity' is provided twice" in p for p in registry.problems)
    assert any("merge method 'linear' is provided twice" in p for p in registry.problems)
    with pytest.raises(
        PluginError,
        match=r"task 'parity' is provided twice: by ssmgraph\.train\.tasks\.synthetic .* and by twin \(ssmgraph-twin 0\.2\); .*SSMGRAPH_DISABLE_PLUGINS=twin",
    ):
        registry.task("parity")
    with pytest.raises(PluginError, match=r"merge method 'linear' is provided twice.*ssmgraph-twin 0\.2") as info:
        registry.merge_method("linear")
    assert info.value.code == "E300"
    assert registry.plugins["twin"].tasks == ["parity"] and registry.plugins["twin"].merge_methods == ["linear"]


def test_a_clash_raises_at_load_in_strict_mode(clash, monkeypatch) -> None:
    monkeypatch.setenv("SSMGRAPH_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="block 'norm.layer' is provided twice"):
        Registry()
