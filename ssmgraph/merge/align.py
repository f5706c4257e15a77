"""The recipe's ``permute`` step: weight-match every model onto the first before merging."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ssmgraph.merge.context import LoadedModel, MergeError


def permute_onto_base(models: Sequence[LoadedModel], options: Mapping[str, Any]) -> dict[str, Any]:
    """Permute each later model's declared spaces (in place) to match the first model's
    weights; returns, per model, how many units moved (for the report)."""
    from ssmgraph.merge.permute import model_spaces, weight_matching

    base = models[0]
    spaces = model_spaces(base.model)
    if not spaces:
        raise MergeError(f"permute: model {base.name!r} has no blocks that declare permutation spaces (nothing to align); drop `permute`")
    units = sum(s.size for s in spaces)
    summary: dict[str, Any] = {"spaces": len(spaces), "units": units}
    for model in models[1:]:
        perms, state = weight_matching(base.model.state_dict(), model.model.state_dict(), spaces, iters=options["iters"], seed=options["seed"])
        model.model.load_state_dict(state)
        moved = sum(int((p != p.new_tensor(range(len(p)))).sum()) for p in perms.values())
        summary[model.name] = {"units_moved": moved, "share_moved": moved / units}
    return summary
