"""A recipe's model, loaded (:class:`LoadedModel`), and the blueprint a model computes, as plain data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ssmgraph.graph.model import CompiledModel
from ssmgraph.merge.recipe import ModelSource


@dataclass
class LoadedModel:
    name: str
    source: ModelSource
    model: CompiledModel

    @property
    def weight(self) -> float:
        return float(self.source.parameters.get("weight", 1.0))


def blueprint_of(model: CompiledModel) -> dict[str, Any]:
    """The blueprint ``model`` computes, as plain data: for a model built as one view of a
    multi-model blueprint (``--model``), only that view's nodes, outputs and taps, since the
    other views' layers are not in its weights."""
    data = model.blueprint.to_dict()
    if model.view is None:
        return data
    kept = {path.split(".")[0] for path in model.nodes} | {
        info.module_path.split(".")[0] for info in model.nodes.values()
    }  # share owners too
    pending = list(kept)
    while pending:  # and what a kept node reads, so that it resolves (the compiler prunes what is not computed)
        for ref in _reads(data["nodes"].get(pending.pop(), {})):
            if ref in data["nodes"] and ref not in kept:
                kept.add(ref)
                pending.append(ref)
    view_taps = set(data.get("models", {}).get(model.view, {}).get("taps", ()))
    data["nodes"] = {name: node for name, node in data["nodes"].items() if name in kept}
    data["outputs"] = {name: ref for name, ref in data["outputs"].items() if name in model.outputs}
    data["taps"] = {name: tap for name, tap in data.get("taps", {}).items() if name in view_taps}
    for key in ("models", "align"):
        data.pop(key, None)
    return data


def _reads(node: Any) -> list[str]:
    """The top-level names a node's ``in`` refers to (``stack.3.out`` -> ``stack``)."""
    value = node.get("in") if isinstance(node, dict) else None
    refs = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else [value]
    return [str(ref).split(".")[0] for ref in refs if ref is not None]
