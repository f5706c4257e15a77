"""What a merge method receives and returns, and how alike its models are.

The runner (:mod:`ssmgraph.merge.run`) loads the recipe's models, classifies them, builds
a :class:`MergeContext` and calls the method's ``run``; the method returns a
:class:`MergeResult` that the runner writes out with its report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssmgraph.errors import SsmgraphError
from ssmgraph.graph.model import CompiledModel
from ssmgraph.merge.recipe import ModelSource, Recipe
from ssmgraph.registry.specs import COMPATIBILITY


class MergeError(SsmgraphError):
    """A merge that cannot run as asked: the models do not fit the method, or the data."""

    code = "E700"


@dataclass
class LoadedModel:
    name: str
    source: ModelSource
    model: CompiledModel

    @property
    def weight(self) -> float:
        return float(self.source.parameters.get("weight", 1.0))


@dataclass
class MergeContext:
    recipe: Recipe
    models: list[LoadedModel]
    compatibility: str
    params: dict[str, Any]
    out_dir: Path
    """The folder the output is being written to (it replaces --out atomically at the end)."""
    task: Any = None
    """The recipe's data task (``ssmgraph.train.tasks.base.Task``), or None."""
    progress: bool = True

    @property
    def base(self) -> LoadedModel:
        name = self.recipe.base_model or self.models[0].name
        return next(m for m in self.models if m.name == name)

    @property
    def others(self) -> list[LoadedModel]:
        return [m for m in self.models if m is not self.base]

    def path(self, value: str) -> Path:
        """A path given in the recipe's parameters, relative to the recipe's folder."""
        return Path(value) if Path(value).is_absolute() else self.recipe.directory / value

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.recipe.seed + offset)

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Held-out loss and accuracy of ``model`` on the recipe's task."""
        from ssmgraph.train.loop import evaluate

        if self.task is None:
            raise MergeError(f"merge method {self.recipe.method.name!r} needs 'data' to evaluate models")
        data = self.recipe.data
        assert data is not None
        return evaluate(model, self.task, data.batch_size, data.eval_size)


@dataclass
class MergeResult:
    """What a method produced. ``model`` is saved as the output folder itself (so
    ``ssmgraph.load(out)`` returns it); ``models`` go to ``out/models/<name>``."""

    model: CompiledModel
    metrics: dict[str, Any] = field(default_factory=dict)
    """JSON figures for report.json (numbers, lists, nested dicts)."""
    tables: list[tuple[str, list[str], list[list[Any]]]] = field(default_factory=list)
    """(title, header, rows) tables for report.md."""
    plots: list[str] = field(default_factory=list)
    """PNG file names the method wrote into ``context.out_dir``."""
    models: dict[str, CompiledModel] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _state_shapes(model: CompiledModel) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _structure(model: CompiledModel) -> list[tuple[str, str]]:
    return [(info.path, info.block) for info in model.nodes.values()]


def blueprint_of(model: CompiledModel) -> dict[str, Any]:
    """The blueprint ``model`` computes, as plain data: for a model built as one view of a
    multi-model blueprint (``--model``), only that view's nodes, outputs and taps, since the
    other views' layers are not in its weights."""
    data = model.blueprint.to_dict()
    if model.view is None:
        return data
    kept = {path.split(".")[0] for path in model.nodes} | {info.module_path.split(".")[0] for info in model.nodes.values()}  # share owners too
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


def _plain_blueprint(model: CompiledModel) -> dict[str, Any]:
    data = blueprint_of(model)
    for key in ("name", "doc"):
        data.pop(key, None)
    return data


def classify(models: list[LoadedModel]) -> tuple[str, str]:
    """The least-alike class over all pairs with the first model, and why."""
    first = models[0]
    worst, reason = "identical", "all models share one blueprint"
    for other in models[1:]:
        cls, why = _pair_class(first, other)
        if COMPATIBILITY.index(cls) > COMPATIBILITY.index(worst):
            worst, reason = cls, why
    return worst, reason


def _pair_class(a: LoadedModel, b: LoadedModel) -> tuple[str, str]:
    if _plain_blueprint(a.model) == _plain_blueprint(b.model):
        return "identical", "the same blueprint"
    if _state_shapes(a.model) == _state_shapes(b.model):
        if a.model.tied != b.model.tied:  # one tensor in one model is two in the other: no tensor-wise average
            ties = {m.name: ", ".join(f"{k} to {v}" for k, v in sorted(m.model.tied.items())) or "nothing" for m in (a, b)}
            return "heterogeneous", f"models {a.name!r} and {b.name!r} tie different weights ({a.name!r} ties {ties[a.name]}; {b.name!r} ties {ties[b.name]})"
        return "same_shape", f"models {a.name!r} and {b.name!r} have different blueprints but the same state-dict names and shapes"
    sa, sb = _structure(a.model), _structure(b.model)
    if sa == sb:
        return "alignable", f"models {a.name!r} and {b.name!r} have the same blocks but different widths"
    blocks_b = dict(sb)
    for path, block in sa:  # first the same place holding different blocks, then extra places
        if path in blocks_b and blocks_b[path] != block:
            return "heterogeneous", f"models {a.name!r} ({block} at {path}) and {b.name!r} ({blocks_b[path]} at {path}) differ"
    only_a = [f"{block} at {path}" for path, block in sa if path not in blocks_b]
    only_b = [f"{block} at {path}" for path, block in sb if path not in dict(sa)]
    where = f"only {a.name!r} has {only_a[0]}" if only_a else f"only {b.name!r} has {only_b[0]}"
    return "heterogeneous", f"models {a.name!r} ({len(sa)} blocks) and {b.name!r} ({len(sb)} blocks) differ: {where}"


def methods_for(compatibility: str) -> list[str]:
    from ssmgraph.registry.plugins import get_registry

    return sorted(name for name, spec in get_registry().merge_methods.items() if spec.accepts(compatibility))

