"""What a merge method receives and returns.

The runner (:mod:`ssmgraph.merge.run`) loads the recipe's models, classifies them
(:mod:`ssmgraph.merge.compatibility`), builds a :class:`MergeContext` and calls the method's
``run``; the method returns a :class:`MergeResult` that the runner writes out with its report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssmgraph.errors import SsmgraphError
from ssmgraph.graph.model import CompiledModel
from ssmgraph.merge.compatibility import Compatibility
from ssmgraph.merge.models import LoadedModel
from ssmgraph.merge.recipe import Recipe
from ssmgraph.train.tasks.base import Task
from ssmgraph.train.trainer import evaluate


class MergeError(SsmgraphError):
    """A merge that cannot run as asked: the models do not fit the method, or the data."""

    code = "E700"


class NonFiniteMergeError(MergeError):
    """A merge whose result holds inf or NaN (weights or parameters that overflow, or a broken source)."""

    code = "E701"


@dataclass
class MergeContext:
    recipe: Recipe
    models: list[LoadedModel]
    compatibility: Compatibility
    params: dict[str, Any]
    out_dir: Path
    """The folder the output is being written to (it replaces --out atomically at the end)."""
    task: Task | None = None
    """The recipe's data task, or None."""
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
        if self.task is None:
            raise MergeError(f"merge method {self.recipe.method.name!r} needs 'data' to evaluate models")
        data = self.recipe.data
        assert data is not None
        return evaluate(model, self.task, data.batch_size, data.eval_size)

    def check_finite(self, result: MergeResult) -> None:
        """Refuse a result holding inf or NaN before it is written: it would load, then compute NaN."""
        outputs = {"the merged model": result.model, **{f"models/{name}": model for name, model in result.models.items()}}
        for where, model in outputs.items():
            key = _first_non_finite(model.state_dict())
            if key is not None:
                raise NonFiniteMergeError(
                    f"{self.recipe.source}: merge method {self.recipe.method.name!r} produced inf or NaN values in tensor {key!r} "
                    f"of {where}; nothing was written. {self._non_finite_help(key)}"
                )

    def _non_finite_help(self, key: str) -> str:
        broken = [m.name for m in self.models if _non_finite(m.model.state_dict().get(key))]
        if broken:
            return f"The source model(s) {', '.join(map(repr, broken))} already hold inf or NaN there: merge models with finite weights."
        weights = ", ".join(f"{m.name}: {m.weight:g}" for m in self.models)
        return f"The values overflowed: use smaller model weights ({weights}) or smaller method parameters (the recipe's `parameters:`)."


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


def _non_finite(tensor: torch.Tensor | None) -> bool:
    return tensor is not None and (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all())


def _first_non_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the first tensor of ``state`` holding inf or NaN."""
    return next((key for key, tensor in state.items() if _non_finite(tensor)), None)
