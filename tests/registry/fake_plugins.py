"""Fake installed plugins for the registry's tests: real distributions on sys.path, found
through real entry points (the ``site`` fixture of conftest.py gives the folder)."""

from __future__ import annotations

import textwrap
from pathlib import Path

GOOD_BLOCK = """
import ssmgraph
from torch import nn
from ssmgraph.registry.specs import BlockSpec, Param, same_as_input

SPEC = BlockSpec(
    name="{name}", role="norm", doc="test block",
    params=(Param("scale", float, 1.0, "a multiplier"),),
    factory=lambda in_types, *, scale: nn.Identity(), shape=same_as_input, pointwise=True,
)

@ssmgraph.hookimpl
def ssmgraph_blocks():
    {hook_body}
    return [SPEC]
"""


def good_block(name: str, hook_body: str = "pass") -> str:
    """A plugin module providing one well-formed block ``name`` (``hook_body`` runs in its hook first)."""
    return GOOD_BLOCK.format(name=name, hook_body=hook_body)


def fake_distribution(root: Path, dist: str, module: str, source: str, version: str = "0.3.1", entry_point: str = "") -> None:
    """An installed distribution on sys.path: a module plus dist-info with an ``ssmgraph`` entry
    point (named after the module unless ``entry_point`` is given).

    Each test names its own module: one that imported stays in sys.modules."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[ssmgraph]\n{entry_point or module} = {module}\n")
