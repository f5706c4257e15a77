"""ssmgraph's own plugins are found as a third party's are (entry points of its distribution),
and registering them imports declarations only: a merge method's implementation is imported
when it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ssmgraph.cli import app
from ssmgraph.merge import weight_methods
from ssmgraph.registry import plugins
from ssmgraph.registry.loading import builtin_entry_points
from ssmgraph.registry.plugins import PluginError, Registry
from ssmgraph.registry.specs import MergeMethodSpec, Param


def test_builtins_are_entry_points_of_the_ssmgraph_distribution() -> None:
    values = {ep.value for ep in builtin_entry_points()}
    assert {"ssmgraph.blocks.attention", "ssmgraph.train.tasks.synthetic", "ssmgraph.merge.builtin"} <= values
    registry = Registry(autoload=False)
    builtins = [r for r in registry.plugins.values() if r.builtin]
    assert {r.name for r in builtins} == {ep.name for ep in builtin_entry_points()}
    assert all(r.dist == "ssmgraph" and r.entry_point == r.name for r in builtins)
    assert registry.plugins["ssmgraph.blocks.norm"].blocks == ["norm.layer", "norm.rms"]
    assert "parity" in registry.plugins["ssmgraph.train.tasks.synthetic"].tasks
    assert "ties" in registry.plugins["ssmgraph.merge.builtin"].merge_methods


def test_missing_builtin_entry_points_say_how_to_reinstall(monkeypatch) -> None:
    monkeypatch.setattr(plugins, "builtin_entry_points", list)
    with pytest.raises(PluginError, match=r"entry points .* are not installed.*pip install -e \."):
        Registry(autoload=False)


def _modules_after(statement: str) -> list[str]:
    """The ssmgraph modules a fresh interpreter holds after ``statement`` (built-in plugins only)."""
    probe = f"import json, sys\n{statement}\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('ssmgraph.'))))\n"
    env = {**os.environ, "SSMGRAPH_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env).stdout)


def test_loading_the_registry_imports_no_merge_or_training_machinery() -> None:
    loaded = _modules_after("from ssmgraph.registry.plugins import get_registry; get_registry()")
    assert [m for m in loaded if m.startswith("ssmgraph.merge")] == [
        "ssmgraph.merge",
        "ssmgraph.merge.builtin",
    ]  # before: mutual, stitch, ...
    assert not [m for m in loaded if m.startswith("ssmgraph.testing")]
    # The built-in tasks live in ssmgraph.train.tasks: beyond them, only what the ssmgraph.train package imports itself.
    package = set(_modules_after("import ssmgraph.train"))
    assert {m for m in loaded if m.startswith("ssmgraph.train") and not m.startswith("ssmgraph.train.tasks")} <= package


def test_a_builtin_merge_method_is_imported_when_it_runs() -> None:
    spec = Registry(autoload=False).merge_method("ties")
    assert spec.run == "ssmgraph.merge.weight_methods:run_ties"
    assert spec.runner() is weight_methods.run_ties


def _method(run: object) -> MergeMethodSpec:
    return MergeMethodSpec(
        name="lazy", doc="A lazily imported method.", params=(Param("k", int, 1, "a knob"),), run=run, plugin="ssmgraph-lazy"
    )


def test_a_reference_that_cannot_be_imported_names_the_method_and_its_plugin() -> None:
    assert _method("ssmgraph_nowhere.methods:run").validate() == []  # declared, not imported
    with pytest.raises(
        PluginError,
        match=r"merge method 'lazy' \(ssmgraph-lazy\) names its implementation 'ssmgraph_nowhere.methods:run'.*ModuleNotFoundError",
    ):
        _method("ssmgraph_nowhere.methods:run").runner()
    with pytest.raises(PluginError, match=r"'ssmgraph.merge.weight_methods:run_nothing'.*AttributeError"):
        _method("ssmgraph.merge.weight_methods:run_nothing").runner()
    with pytest.raises(PluginError, match=r"'ssmgraph.merge.weight_methods:W', which is a module, not a function"):
        _method("ssmgraph.merge.weight_methods:W").runner()


@pytest.mark.parametrize("run", ["run_linear", "ssmgraph.merge.weight_methods.run_linear", "a b:c", 3])
def test_run_must_be_a_function_or_a_reference(run: object) -> None:
    (problem,) = _method(run).validate()
    assert problem.startswith("run must be a function or a 'package.module:function' reference")


def test_plugins_lists_the_blocks_tasks_and_merge_methods_of_each_plugin() -> None:
    result = CliRunner().invoke(app, ["plugins"], env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    rows = {
        line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
        for line in result.stdout.splitlines()
        if line.startswith("│")
    }
    assert rows["blocks.norm (built-in)"][3:] == ["norm.layer, norm.rms", "", ""]
    assert rows["train.tasks.digits (built-in)"][3:] == ["", "digits", ""]
    assert rows["merge.builtin (built-in)"][5].startswith("linear, task_arithmetic, ties")
