"""ssmgraph: declare sequence models as YAML blueprints, build, train and merge them.

The public API::

    import ssmgraph
    model = ssmgraph.build("gpt", d_model=256)        # a shipped blueprint, a path, a dict, or a Blueprint
    ssmgraph.save(model, "runs/gpt")                  # resolved blueprint + safetensors, atomically
    model = ssmgraph.load("runs/gpt")
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ssmgraph.blueprint import Blueprint, load_blueprint
from ssmgraph.errors import BlueprintError, SsmgraphError
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.graph.model import CompiledModel
from ssmgraph.optim import param_groups
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import BlockSpec, Param, PermAxis, PermSpace, ShapeError, TensorType
from ssmgraph.serialization import load, save
from ssmgraph.version import __version__ as __version__  # re-exported: ssmgraph.__version__
from ssmgraph.zoo import create_model

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
    if isinstance(source, Blueprint):
        if params:
            raise TypeError("params can only be overridden when building from a file; use load_blueprint(path, overrides)")
        blueprint = source
    else:
        blueprint = load_blueprint(source, params)
    return compile_blueprint(blueprint, model=model)
