"""The built-in merge methods, registered through the same hook as any plugin's.

Method code imports its machinery when it runs: this module is loaded with the registry by
every command. Weight-space methods (mergekit's names and parameters) act on state dicts of models with
one blueprint (or at least the same state-dict shapes); `mutual` trains models of any
architectures together; `stitch` and `superpose` join different models through their
hidden states.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from ssmgraph.merge.context import MergeContext, MergeError, MergeResult
from ssmgraph.merge.mutual import MUTUAL
from ssmgraph.merge.stitch import STITCH
from ssmgraph.merge.superpose import SUPERPOSE
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import MergeMethodSpec, Param

StateDict = dict[str, torch.Tensor]


def _states(context: MergeContext) -> tuple[StateDict, list[StateDict], list[float]]:
    base = context.base.model.state_dict()
    others = [m.model.state_dict() for m in context.others]
    return base, others, [m.weight for m in context.others]


def _merged_model(context: MergeContext, state: StateDict) -> Any:
    model = copy.deepcopy(context.base.model)
    model.load_state_dict(state)
    return model


def _evaluated(context: MergeContext, merged: Any, result: MergeResult) -> MergeResult:
    """Held-out loss and accuracy of every source and the merge, when the recipe has data."""
    if context.task is None:
        result.notes.append("no `data:` in the recipe, so nothing was evaluated")
        return result
    rows, figures = [], {}
    for name, model in [*((m.name, m.model) for m in context.models), ("merged", merged)]:
        figures[name] = context.evaluate(model)
        rows.append([name, figures[name]["loss"], figures[name]["accuracy"]])
    result.metrics["evaluation"] = figures
    result.tables.append((f"Held-out {context.recipe.data.task}", ["model", "loss", "accuracy"], rows))
    return result


def _weight_method(merge: Callable[[MergeContext], StateDict]) -> Callable[[MergeContext], MergeResult]:
    def run(context: MergeContext) -> MergeResult:
        merged = _merged_model(context, merge(context))
        return _evaluated(context, merged, MergeResult(merged))

    return run


def _linear(context: MergeContext) -> StateDict:
    from ssmgraph.merge import weights as W

    states = [m.model.state_dict() for m in context.models]
    weights = [m.weight for m in context.models]
    if context.params["normalize"] and sum(weights) == 0:
        listed = ", ".join(f"{m.name}: {m.weight:g}" for m in context.models)
        raise MergeError(f"{context.recipe.source}: the models' weights ({listed}) sum to 0, so they cannot be normalised; change a weight or set normalize: false")
    return W.linear(states, weights, normalize=context.params["normalize"])


def _task_arithmetic(context: MergeContext) -> StateDict:
    from ssmgraph.merge import weights as W

    base, others, weights = _states(context)
    return W.task_arithmetic(base, others, weights, scale=context.params["scale"])


def _ties(context: MergeContext) -> StateDict:
    from ssmgraph.merge import weights as W

    base, others, weights = _states(context)
    merged = W.ties(base, others, weights, density=context.params["density"], majority=context.params["majority"])
    if context.params["scale"] != 1.0:  # λ on the merged task vector, as in task arithmetic
        merged = {k: base[k] + context.params["scale"] * (v - base[k]) if v.is_floating_point() else v for k, v in merged.items()}
    return merged


def _dare(context: MergeContext) -> StateDict:
    from ssmgraph.merge import weights as W

    base, others, weights = _states(context)
    return W.dare(
        base, others, weights, density=context.params["density"], rescale=context.params["rescale"],
        sign_election=context.params["ties"], generator=context.generator(),
    )


def _slerp(context: MergeContext) -> StateDict:
    from ssmgraph.merge import weights as W

    a, b = (m.model.state_dict() for m in context.models)
    return W.slerp(a, b, context.params["t"])


_BASE_NOTE = "the task-vector base is `base_model` (default: the first model)"
_DENSITY = Param("density", float, 0.5, "fraction of each task vector's entries kept (by magnitude for TIES, at random for DARE)", min=1e-6, max=1.0)
_SCALE = Param("scale", float, 1.0, "λ: how much of the merged task vector is added to the base", min=0.0)

METHODS = [
    MergeMethodSpec(
        name="linear",
        doc="Weighted average of the models' parameters (model soup).",
        params=(Param("normalize", bool, True, "divide by the sum of the model weights"),),
        run=_weight_method(_linear),
        needs="same_shape",
        reference="Wortsman et al. 2022, Model soups; mergekit `linear`",
    ),
    MergeMethodSpec(
        name="task_arithmetic",
        doc=f"Base plus the weighted sum of task vectors (model − base); {_BASE_NOTE}.",
        params=(_SCALE,),
        run=_weight_method(_task_arithmetic),
        needs="same_shape",
        reference="Ilharco et al. 2023, Editing Models with Task Arithmetic; mergekit `task_arithmetic`",
    ),
    MergeMethodSpec(
        name="ties",
        doc=f"TIES: trim task vectors to their largest entries, elect a sign per entry, average the agreeing ones; {_BASE_NOTE}.",
        params=(_DENSITY, Param("majority", str, "sum", "sign election by summed mass or by count", choices=("sum", "count")), _SCALE),
        run=_weight_method(_ties),
        needs="same_shape",
        reference="Yadav et al. 2023, TIES-Merging; mergekit `ties`",
    ),
    MergeMethodSpec(
        name="dare",
        doc=f"DARE: drop task-vector entries at random and rescale the rest, then add (or TIES-merge) them; {_BASE_NOTE}.",
        params=(
            _DENSITY,
            Param("rescale", bool, True, "divide the kept entries by density (keeps the expectation)"),
            Param("ties", bool, False, "elect signs as TIES does (mergekit `dare_ties`) instead of a plain sum (`dare_linear`)"),
        ),
        run=_weight_method(_dare),
        needs="same_shape",
        reference="Yu et al. 2024, Language Models are Super Mario (DARE); mergekit `dare_linear`/`dare_ties`",
    ),
    MergeMethodSpec(
        name="slerp",
        doc="Spherical interpolation of two models, tensor by tensor (linear when nearly colinear).",
        params=(Param("t", float, 0.5, "position between the first (0) and second (1) model", min=0.0, max=1.0),),
        run=_weight_method(_slerp),
        needs="same_shape",
        max_models=2,
        reference="Shoemake 1985; mergekit `slerp`",
    ),
    MUTUAL,
    STITCH,
    SUPERPOSE,
]


@hookimpl
def ssmgraph_merge_methods() -> list[MergeMethodSpec]:
    return list(METHODS)
