"""ssmgraph: declare sequence models as YAML blueprints, build, train and merge them.

The public API::

    import ssmgraph
    model = ssmgraph.build("gpt", d_model=256)        # a shipped blueprint, a path, a dict, or a Blueprint
    ssmgraph.save(model, "runs/gpt")                  # resolved blueprint + safetensors, atomically
    model = ssmgraph.load("runs/gpt")
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssmgraph.version import __version__ as __version__  # re-exported: ssmgraph.__version__

# The names below are imported on first use (PEP 562 ``__getattr__``), not here: most of them
# need torch, and importing ``ssmgraph.cli`` imports this package first, so eager imports would
# make `ssmgraph --help` pay seconds for torch (tests/cli/test_startup.py keeps it out).
if TYPE_CHECKING:
    from ssmgraph.blueprint import Blueprint, load_blueprint
    from ssmgraph.errors import BlueprintError, SsmgraphError
    from ssmgraph.graph.model import CompiledModel
    from ssmgraph.optim import param_groups
    from ssmgraph.registry.hookspecs import hookimpl
    from ssmgraph.registry.specs import BlockSpec, Param, PermAxis, PermSpace, ShapeError, TensorType
    from ssmgraph.serialization import load, save
    from ssmgraph.zoo import create_model

_ON_FIRST_USE = {
    "BlockSpec": "ssmgraph.registry.specs",
    "Blueprint": "ssmgraph.blueprint",
    "BlueprintError": "ssmgraph.errors",
    "CompiledModel": "ssmgraph.graph.model",
    "Param": "ssmgraph.registry.specs",
    "PermAxis": "ssmgraph.registry.specs",
    "PermSpace": "ssmgraph.registry.specs",
    "ShapeError": "ssmgraph.registry.specs",
    "SsmgraphError": "ssmgraph.errors",
    "TensorType": "ssmgraph.registry.specs",
    "create_model": "ssmgraph.zoo",
    "hookimpl": "ssmgraph.registry.hookspecs",
    "load": "ssmgraph.serialization",
    "load_blueprint": "ssmgraph.blueprint",
    "param_groups": "ssmgraph.optim",
    "save": "ssmgraph.serialization",
}

__all__ = [
    "BlockSpec",
    "Blueprint",
    "BlueprintError",
    "CompiledModel",
    "Param",
    "PermAxis",
    "PermSpace",
    "ShapeError",
    "SsmgraphError",
    "TensorType",
    "build",
    "create_model",
    "hookimpl",
    "load",
    "load_blueprint",
    "param_groups",
    "save",
]


def build(source: str | Path | Mapping[str, Any] | Blueprint, *, model: str | None = None, **params: Any) -> CompiledModel:
    """Compile a blueprint (a path, a shipped blueprint's name, a mapping, or a loaded Blueprint).

    Keyword arguments override the blueprint's ``params`` (like ``--set`` on the CLI).
    ``model=`` builds one named view of a multi-model blueprint."""
    from ssmgraph.blueprint import Blueprint, load_blueprint  # deferred (torch): start-up time, see above
    from ssmgraph.graph.compile import compile_blueprint  # deferred (torch): start-up time, see above

    if isinstance(source, Blueprint):
        if params:
            raise TypeError("params can only be overridden when building from a file; use load_blueprint(path, overrides)")
        blueprint = source
    else:
        blueprint = load_blueprint(source, params)
    return compile_blueprint(blueprint, model=model)


def __getattr__(name: str) -> Any:
    if name in _ON_FIRST_USE:
        value = getattr(importlib.import_module(_ON_FIRST_USE[name]), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")  # a submodule, as `import ssmgraph` used to load many
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
