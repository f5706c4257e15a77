"""The plugin host: real entry points, broken and malformed plugins, clashes, switches."""

from __future__ import annotations

import importlib.metadata as md
import textwrap
from pathlib import Path

import pytest
import torch
from fake_plugins import fake_distribution, good_block

import ssmgraph
from ssmgraph.blueprint import load_blueprint
from ssmgraph.errors import BlueprintError
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.registry import hookspecs
from ssmgraph.registry.loading import builtin_entry_points
from ssmgraph.registry.plugins import PluginError, Registry, reset_registry


def test_builtins_register_through_the_same_hook() -> None:
    registry = Registry(autoload=False)
    assert set(registry.plugins) == {ep.name for ep in builtin_entry_points()}
    assert all(record.builtin and record.status == "loaded" for record in registry.plugins.values())
    assert registry.get("mix.attention").plugin == "ssmgraph"


def test_installed_test_plugin_is_found_through_its_entry_point() -> None:
    """tests/plugins/ssmgraph-testplugin is pip-installed by the README's test command and CI."""
    names = [ep.name for ep in md.entry_points(group="ssmgraph")]
    assert "testplugin" in names, "install it: pip install -e tests/plugins/ssmgraph-testplugin"
    registry = Registry()
    spec = registry.get("mix.ema")
    assert spec is not None and spec.plugin == "ssmgraph-testplugin"
    assert registry.plugins["testplugin"].version == "0.1.0"


def test_third_party_block_builds_steps_and_saves(tmp_path) -> None:
    text = """
    ssmgraph: 1
    inputs: {tokens: {dtype: int64}}
    nodes:
      embed: {block: embed.token, in: tokens, args: {vocab: 11, dim: 8}}
      ema: {block: mix.ema, in: embed, args: {init_decay: 0.5}}
      head: {block: head.lm, in: ema, args: {vocab: 11}}
    outputs: {logits: head}
    """
    model = compile_blueprint(load_blueprint("ema.yaml", text=textwrap.dedent(text)))
    tokens = torch.randint(0, 11, (2, 6))
    logits, state = None, model.init_state(2)
    steps = []
    for t in range(6):
        logits, state = model.step(tokens[:, t], state=state)
        steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), model(tokens))
    ssmgraph.save(model, tmp_path / "m")
    reset_registry(Registry(autoload=False))  # as if the plugin were uninstalled
    try:
        with pytest.raises(
            ssmgraph.SsmgraphError, match=r"mix\.ema \(from ssmgraph-testplugin 0\.1\.0\).*pip install ssmgraph-testplugin"
        ):
            ssmgraph.load(tmp_path / "m")
    finally:
        reset_registry(None)


def test_plugin_that_fails_to_import_is_reported_and_skipped(site) -> None:
    fake_distribution(site, "ssmgraph-broken", "broken_plugin", "raise ImportError('needs libfoo')\n")
    registry = Registry()
    record = registry.plugins["broken_plugin"]
    assert record.status == "failed" and record.dist == "ssmgraph-broken" and record.version == "0.3.1"
    assert "ImportError: needs libfoo" in record.error
    assert any("ssmgraph-broken 0.3.1" in p for p in registry.problems)
    assert registry.get("mix.attention") is not None  # everything else still works
    reset_registry(registry)
    with pytest.raises(BlueprintError) as info:
        compile_blueprint(load_blueprint("x.yaml", text=_uses("norm.fancy")))
    assert info.value.codes == ["E201"]
    assert "ssmgraph-broken 0.3.1" in info.value.diagnostics[0].help


def _uses(block: str) -> str:
    return f"""
ssmgraph: 1
inputs: {{x: {{dtype: float32, shape: [batch, seq, 4]}}}}
nodes:
  n: {{block: {block}, in: x}}
outputs: {{y: n}}
"""


def test_strict_mode_raises_with_the_traceback(site, monkeypatch) -> None:
    fake_distribution(site, "ssmgraph-broken", "broken_plugin", "raise ImportError('needs libfoo')\n")
    monkeypatch.setenv("SSMGRAPH_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="ssmgraph-broken 0.3.1.*needs libfoo"):
        Registry()


def test_malformed_spec_is_reported_and_skipped(site) -> None:
    fake_distribution(site, "ssmgraph-bad", "bad_plugin", good_block("Not A Name"))
    registry = Registry()
    assert "Not A Name" not in registry.blocks
    assert any("ssmgraph-bad 0.3.1" in p and "malformed" in p for p in registry.problems)


THREE_BLOCKS = good_block("norm.first").replace(
    "    return [SPEC]",
    '    return [SPEC, dataclasses.replace(SPEC, name="Bad Name"), dataclasses.replace(SPEC, name="norm.second")]',
)


def test_the_warning_for_one_bad_spec_says_which_blocks_loaded(site) -> None:
    fake_distribution(site, "ssmgraph-mixed", "mixed_plugin", "import dataclasses\n" + THREE_BLOCKS)
    registry = Registry()
    (warning,) = [p for p in registry.problems if "ssmgraph-mixed" in p]
    assert "block 'Bad Name' is malformed" in warning and "its other blocks loaded: norm.first, norm.second" in warning
    record = registry.plugins["mixed_plugin"]  # before: a copy with the error replaced it, and lost its blocks
    assert record.status == "loaded" and record.blocks == ["norm.first", "norm.second"] and "Bad Name" in record.error
    assert registry.get("norm.first").plugin == registry.get("norm.second").plugin == "ssmgraph-mixed"


def test_a_spec_too_broken_to_check_is_reported_and_skipped(site) -> None:
    source = good_block("norm.single").replace(
        'params=(Param("scale", float, 1.0, "a multiplier"),)', 'params=Param("scale", float, 1.0, "a multiplier")'
    )
    fake_distribution(site, "ssmgraph-single", "single_plugin", source)
    registry = Registry()
    assert "norm.single" not in registry.blocks and registry.get("mix.attention") is not None
    assert any(
        "ssmgraph-single 0.3.1" in p and "params must be a tuple of Param records, got Param" in p for p in registry.problems
    )


def test_two_distributions_may_name_their_entry_points_alike(site) -> None:
    fake_distribution(site, "ssmgraph-one", "one_plugin", good_block("norm.one"), entry_point="blocks")
    fake_distribution(site, "ssmgraph-two", "two_plugin", good_block("norm.two"), entry_point="blocks")
    registry = Registry()
    assert registry.get("norm.one") is not None and registry.get("norm.two") is not None
    assert {registry.plugins[name].dist for name in ("blocks", "ssmgraph-two:blocks")} == {"ssmgraph-one", "ssmgraph-two"}


def test_disabling_one_of_two_alike_named_entry_points_keeps_the_other(site, monkeypatch) -> None:
    fake_distribution(site, "ssmgraph-one", "one_plugin", good_block("norm.one"), entry_point="blocks")
    fake_distribution(site, "ssmgraph-two", "two_plugin", good_block("norm.two"), entry_point="blocks")
    for disabled, kept in (("ssmgraph-one", "ssmgraph-two"), ("ssmgraph-two", "ssmgraph-one")):
        monkeypatch.setenv("SSMGRAPH_DISABLE_PLUGINS", disabled)
        registry = Registry()
        records = {r.dist: r.status for r in registry.plugins.values() if r.dist in (disabled, kept)}
        assert records == {disabled: "disabled", kept: "loaded"}
        assert (
            registry.get("norm." + kept.split("-")[1]).plugin == kept and registry.get("norm." + disabled.split("-")[1]) is None
        )


def test_hook_that_raises_is_reported(site) -> None:
    fake_distribution(
        site,
        "ssmgraph-raises",
        "raises_plugin",
        "import ssmgraph\n@ssmgraph.hookimpl\ndef ssmgraph_blocks():\n    raise RuntimeError('boom')\n",
    )
    registry = Registry()
    assert registry.plugins["raises_plugin"].status == "failed"
    assert "RuntimeError: boom" in registry.plugins["raises_plugin"].error


def test_environment_switches(site, monkeypatch) -> None:
    fake_distribution(site, "ssmgraph-extra", "extra_plugin", good_block("norm.extra"))
    assert Registry().get("norm.extra") is not None
    monkeypatch.setenv("SSMGRAPH_DISABLE_PLUGINS", "extra_plugin")
    registry = Registry()
    assert registry.get("norm.extra") is None and registry.plugins["extra_plugin"].status == "disabled"
    monkeypatch.delenv("SSMGRAPH_DISABLE_PLUGINS")
    monkeypatch.setenv("SSMGRAPH_PLUGINS", "testplugin")
    assert Registry().get("norm.extra") is None
    monkeypatch.delenv("SSMGRAPH_PLUGINS")
    monkeypatch.setenv("SSMGRAPH_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry = Registry()
    assert registry.get("norm.extra") is None and "extra_plugin" not in registry.plugins


def test_block_names_never_resolve_as_import_paths() -> None:
    with pytest.raises(BlueprintError) as info:
        compile_blueprint(load_blueprint("x.yaml", text=_uses("os.system")))
    assert info.value.codes == ["E201"]


def test_every_hookspec_is_tested_and_documented() -> None:
    """datasette's meta-test: each hook has a test mentioning it and a section in docs/plugins.md."""
    hooks = [name for name in dir(hookspecs) if name.startswith("ssmgraph_")]
    root = Path(__file__).resolve().parents[2]
    tests = "".join(p.read_text() for p in (root / "tests").rglob("test_*.py"))
    docs = (root / "docs" / "plugins.md").read_text()
    for hook in hooks:
        assert f"def {hook}(" in tests, f"no test implements {hook}"
        assert f"`{hook}" in docs, f"docs/plugins.md does not document {hook}"
