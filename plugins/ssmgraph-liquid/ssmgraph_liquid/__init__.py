"""ssmgraph-liquid: Liquid-S4, LTC and CfC blocks for ssmgraph, as an installable plugin.

ssmgraph finds this package through its entry point (group ``ssmgraph``, see
pyproject.toml) and registers the blocks ``ssmgraph_blocks`` returns. It uses only
ssmgraph's public API: ``ssmgraph``, ``ssmgraph.registry.specs`` and ``ssmgraph.kernels``.
"""

from __future__ import annotations

from pathlib import Path

import ssmgraph
from ssmgraph_liquid import cfc, liquid_s4, ltc

BLUEPRINTS = Path(__file__).parent / "blueprints"
"""The plugin's blueprints: ``ssmgraph build <BLUEPRINTS>/liquid_s4.yaml``."""


@ssmgraph.hookimpl
def ssmgraph_blocks() -> list[ssmgraph.BlockSpec]:
    return [liquid_s4.SPEC, ltc.SPEC, cfc.SPEC]
