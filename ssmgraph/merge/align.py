"""The recipe's ``permute`` step: align every model onto the first before merging."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ssmgraph.graph.perm_spaces import GraphSpace
from ssmgraph.merge.context import MergeError
from ssmgraph.merge.models import LoadedModel
from ssmgraph.merge.permute.matching import activation_matching, weight_matching
from ssmgraph.merge.permute.model_spaces import model_spaces
from ssmgraph.train.tasks.base import Task


def permute_onto_base(
    models: Sequence[LoadedModel], options: Mapping[str, Any], task: Task | None = None, *, batch_size: int = 32, seed: int = 0
) -> dict[str, Any]:
    """Permute each later model's spaces (in place) to match the first model — by weights, or
    the residual stream by activations on ``task``'s training data (``match: activations``,
    which the recipe checks has a task); returns, per model, how many units moved (for the report)."""
    base = models[0]
    spaces = model_spaces(base.model)
    if not spaces:
        raise MergeError(
            f"permute: model {base.name!r} has no blocks that declare permutation spaces (nothing to align); drop `permute`"
        )
    batches = []
    if options["match"] == "activations" and task is not None:
        generator = torch.Generator().manual_seed(seed)
        batches = [(task.sample(batch_size, generator, "train").inputs,) for _ in range(options["probe_batches"])]
    units = sum(s.size for s in spaces)
    summary: dict[str, Any] = {"spaces": len(spaces), "units": units, "match": options["match"]}
    graph = [s for s in spaces if isinstance(s, GraphSpace)]
    for model in models[1:]:
        fixed = activation_matching(base.model, model.model, graph, batches) if batches else None
        perms, state = weight_matching(
            base.model.state_dict(), model.model.state_dict(), spaces, iters=options["iters"], seed=options["seed"], fixed=fixed
        )
        model.model.load_state_dict(state)
        moved = sum(int((p != p.new_tensor(range(len(p)))).sum()) for p in perms.values())
        summary[model.name] = {"units_moved": moved, "share_moved": moved / units}
    return summary
