"""Every built-in block (and the installed test plugin's) passes the conformance kit."""

from __future__ import annotations

from ssmgraph.registry.plugins import get_registry
from ssmgraph.testing import BlockCase, parametrize_block_checks

KNOWN_FAILURES = {
    ("mix.lstm", "torch_compile"): "Dynamo wraps nn.LSTM only with torch._dynamo.config.allow_rnn = True",
}


def _builtin_and_test_plugin_blocks() -> list[str]:
    return [spec.name for spec in get_registry().search() if spec.plugin in ("ssmgraph", "ssmgraph-testplugin")]


def _expected(case: BlockCase) -> dict[str, str]:
    return {check: why for (block, check), why in KNOWN_FAILURES.items() if block == case.spec.name}


@parametrize_block_checks(_builtin_and_test_plugin_blocks(), expected_failed_checks=_expected)
def test_block_conformance(block_check):
    block_check()


def test_every_builtin_plugin_module_contributes_checked_blocks():
    names = set(_builtin_and_test_plugin_blocks())
    assert {"mix.s4", "mix.mamba", "mix.attention", "embed.token", "head.lm", "mix.ema"} <= names
    assert sum(record.builtin for record in get_registry().plugins.values()) >= 10
