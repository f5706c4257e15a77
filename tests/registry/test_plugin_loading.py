"""Loading entry-point plugins that misbehave at import: sys.exit, prints, slowness."""

from __future__ import annotations

import json

import pytest
from fake_plugins import fake_distribution, good_block
from typer.testing import CliRunner

from ssmgraph.cli import app
from ssmgraph.registry import plugins
from ssmgraph.registry.plugins import PluginError, Registry, reset_registry

WIDE = {"COLUMNS": "200", "NO_COLOR": "1"}  # warnings on one line


def test_a_plugin_that_calls_sys_exit_at_import_is_skipped_with_a_warning(site) -> None:
    fake_distribution(site, "ssmgraph-exits", "exits_plugin", "import sys\nsys.exit(3)\n")
    fake_distribution(site, "ssmgraph-fine", "fine_plugin", good_block("norm.fine"))
    registry = Registry()  # before: SystemExit(3) ended the process
    record = registry.plugins["exits_plugin"]
    assert record.status == "failed" and "sys.exit(3)" in record.error
    assert any("ssmgraph-exits 0.3.1" in p and "sys.exit(3)" in p for p in registry.problems)
    assert registry.get("norm.fine") is not None and registry.get("mix.attention") is not None


def test_a_hook_that_calls_sys_exit_is_skipped_too(site) -> None:
    fake_distribution(site, "ssmgraph-hookexit", "hookexit_plugin", good_block("norm.exits", hook_body="raise SystemExit(4)"))
    registry = Registry()
    assert registry.plugins["hookexit_plugin"].status == "failed" and registry.get("norm.exits") is None
    assert any("ssmgraph-hookexit 0.3.1" in p and "SystemExit" in p for p in registry.problems)


def test_sys_exit_at_import_raises_in_strict_mode(site, monkeypatch) -> None:
    fake_distribution(site, "ssmgraph-exits", "exits_plugin", "import sys\nsys.exit(3)\n")
    monkeypatch.setenv("SSMGRAPH_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"ssmgraph-exits 0\.3\.1.*sys\.exit\(3\)"):
        Registry()


def test_ctrl_c_during_a_plugin_import_is_not_swallowed(site) -> None:
    fake_distribution(site, "ssmgraph-slowpoke", "slowpoke_plugin", "raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        Registry()


def test_what_a_plugin_prints_while_loading_stays_out_of_build_json(site) -> None:
    source = "print('hello from the plugin')\n" + good_block("norm.chatty", hook_body="print('hook says hi')")
    fake_distribution(site, "ssmgraph-chatty", "chatty_plugin", source)
    result = CliRunner().invoke(app, ["build", "gpt", "--set", "layers=1", "--json"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == "gpt"  # before: the prints came first and broke the JSON
    assert "plugin 'chatty_plugin' (ssmgraph-chatty 0.3.1) printed 'hello from the plugin'" in " ".join(
        result.stderr.split()
    )  # rich may wrap the line
    assert "'hook says hi'" in result.stderr


def test_a_slow_plugin_import_is_named_with_its_seconds(site, monkeypatch) -> None:
    monkeypatch.setattr(plugins, "SLOW_IMPORT_SECONDS", 0.01)
    fake_distribution(site, "ssmgraph-sleepy", "sleepy_plugin", "import time\ntime.sleep(0.05)\n" + good_block("norm.sleepy"))
    fake_distribution(site, "ssmgraph-quick", "quick_plugin", good_block("norm.quick"))
    registry = Registry()
    (notice,) = [n for n in registry.notices if "to import" in n]
    assert (
        "plugin 'sleepy_plugin' (ssmgraph-sleepy 0.3.1) took" in notice and "SSMGRAPH_DISABLE_PLUGINS=ssmgraph-sleepy" in notice
    )
    assert registry.get("norm.sleepy") is not None  # slow, not broken
    reset_registry(registry)
    result = CliRunner().invoke(app, ["blocks", "norm.quick"], env=WIDE)
    assert "warning: plugin 'sleepy_plugin' (ssmgraph-sleepy 0.3.1) took" in " ".join(result.stderr.split())
