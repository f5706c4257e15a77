"""``ssmgraph plugin new NAME``: write a block-plugin package a third party starts from.

The template (``ssmgraph/templates/plugin``) is a working plugin — a causal depthwise
convolution with a recurrent step, its entry point, and tests that run the conformance
kit — so a new plugin passes its checks before its author changes a line.
"""

from __future__ import annotations

import re
from pathlib import Path

from ssmgraph.errors import SsmgraphError
from ssmgraph.folders import atomic_directory
from ssmgraph.registry.plugins import get_registry

TEMPLATE_DIR = Path(__file__).parent / "templates" / "plugin"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def plugin_names(name: str) -> dict[str, str]:
    """The names a plugin called ``name`` uses: distribution, module, entry point, block."""
    if not _NAME_RE.match(name):
        raise SsmgraphError(
            f"plugin name {name!r} must be lowercase letters, digits and _, starting with a letter (e.g. my_mixer)"
        )
    return {"name": name, "dist": "ssmgraph-" + name.replace("_", "-"), "module": f"ssmgraph_{name}", "block": f"mix.{name}"}


def new_plugin(name: str, parent: Path) -> Path:
    """Write the plugin package into ``parent/<distribution name>`` and return that folder."""
    names = plugin_names(name)
    target = parent / names["dist"]
    if target.exists():
        raise SsmgraphError(f"{target} already exists; choose another name or folder (--out)")
    taken = get_registry().get(names["block"])
    if taken is not None:
        raise SsmgraphError(
            f"block {names['block']!r} already exists (from {taken.plugin}); a plugin must name a new block, e.g. `ssmgraph plugin new my_{name}`"
        )
    with atomic_directory(target) as folder:  # a failure leaves nothing half-written
        for source in sorted(TEMPLATE_DIR.rglob("*.tmpl")):
            relative = source.relative_to(TEMPLATE_DIR).with_suffix("")
            path = folder / str(relative).replace("__module__", names["module"])
            text = source.read_text(encoding="utf-8")
            for key, value in names.items():
                text = text.replace("{{" + key + "}}", value)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    return target
