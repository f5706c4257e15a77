"""`ssmgraph plugin new` writes a plugin that works: it registers and passes the kit."""

from __future__ import annotations

import importlib
import sys

import pytest
import tomllib
from typer.testing import CliRunner

from ssmgraph.cli import app
from ssmgraph.registry.plugins import Registry
from ssmgraph.testing import check_block


@pytest.fixture
def generated(tmp_path, monkeypatch):
    result = CliRunner().invoke(app, ["plugin", "new", "short_conv", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    root = tmp_path / "ssmgraph-short-conv"
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in [m for m in sys.modules if m.startswith("ssmgraph_short_conv")]:
        del sys.modules[name]


def test_the_package_declares_its_entry_point(generated):
    project = tomllib.loads((generated / "pyproject.toml").read_text())
    assert project["project"]["name"] == "ssmgraph-short-conv"
    assert project["project"]["entry-points"]["ssmgraph"] == {"short_conv": "ssmgraph_short_conv"}
    assert (generated / "tests" / "test_conformance.py").exists()
    assert "{{" not in "".join(p.read_text() for p in generated.rglob("*") if p.is_file())


def test_the_template_imports_only_the_public_plugin_module(generated):
    sources = {path.name: path.read_text() for path in generated.rglob("*.py")}
    imported = [
        line.split()[1] for text in sources.values() for line in text.splitlines() if line.startswith(("from ", "import "))
    ]
    imports = {name for name in imported if name.split(".")[0] == "ssmgraph"}
    assert imports == {"ssmgraph.plugin"}, imports  # before: ssmgraph, ssmgraph.registry.specs, ssmgraph.testing, ...


def test_the_template_block_registers_and_passes_every_check(generated):
    plugin = importlib.import_module("ssmgraph_short_conv")
    registry = Registry(autoload=False)
    registry.register(plugin, "short_conv", "ssmgraph-short-conv", "0.1.0")
    registry.collect()
    spec = registry.get("mix.short_conv")
    assert spec is not None and spec.plugin == "ssmgraph-short-conv"
    for example in spec.examples:
        assert check_block(spec, example).ok


def test_bad_names_and_existing_folders_are_refused(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["plugin", "new", "My-Mixer", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "lowercase letters" in bad.stderr
    assert runner.invoke(app, ["plugin", "new", "dup", "--out", str(tmp_path)]).exit_code == 0
    again = runner.invoke(app, ["plugin", "new", "dup", "--out", str(tmp_path)])
    assert again.exit_code == 2 and "already exists" in again.stderr
    builtin = runner.invoke(app, ["plugin", "new", "s4d", "--out", str(tmp_path)])  # mix.s4d is taken
    assert builtin.exit_code == 2 and "block 'mix.s4d' already exists (from ssmgraph)" in builtin.stderr
    (tmp_path / "afile").write_text("x")
    under_a_file = runner.invoke(app, ["plugin", "new", "fresh", "--out", str(tmp_path / "afile")])
    assert under_a_file.exit_code == 2 and "under a file" in under_a_file.stderr and "Traceback" not in under_a_file.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "ssmgraph-dup"]  # nothing half-written
