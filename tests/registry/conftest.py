"""The ``site`` fixture: a folder on sys.path for fake distributions (fake_plugins.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssmgraph.registry.plugins import reset_registry

SWITCHES = ("SSMGRAPH_PLUGINS", "SSMGRAPH_DISABLE_PLUGINS", "SSMGRAPH_DISABLE_PLUGIN_AUTOLOAD", "SSMGRAPH_STRICT_PLUGINS")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A folder on sys.path for fake distributions, with the plugin switches unset and a
    fresh process-wide registry before and after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in SWITCHES:
        monkeypatch.delenv(name, raising=False)
    reset_registry(None)
    yield tmp_path
    reset_registry(None)
