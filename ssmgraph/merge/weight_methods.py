"""The weight-space merge methods (linear, task_arithmetic, ties, dare, slerp) as merge-method
runs: the context's state dicts merged by :mod:`ssmgraph.merge.weights` — a parameter that
stacks several Hugging Face tensors part by part, parameters that are one Hugging Face tensor as
one (:func:`ssmgraph.merge.parts.merge_parts` of the base model) — loaded into a copy of the base model, and evaluated when the recipe has data.
"""

from __future__ import annotations

import copy

import torch

from ssmgraph.merge import weights as W
from ssmgraph.merge.context import MergeContext, MergeError, MergeResult
from ssmgraph.merge.parts import merge_parts

StateDict = dict[str, torch.Tensor]


def run_linear(context: MergeContext) -> MergeResult:
    states = [m.model.state_dict() for m in context.models]
    weights = [m.weight for m in context.models]
    if context.params["normalize"] and sum(weights) == 0:
        listed = ", ".join(f"{m.name}: {m.weight:g}" for m in context.models)
        raise MergeError(
            f"{context.recipe.source}: the models' weights ({listed}) sum to 0, so they cannot be normalised; change a weight or set normalize: false"
        )
    merged = W.linear(states, weights, normalize=context.params["normalize"], parts=model_parts(context))
    return merged_result(context, merged)


def run_task_arithmetic(context: MergeContext) -> MergeResult:
    base, others, weights = base_and_others(context)
    return merged_result(
        context, W.task_arithmetic(base, others, weights, scale=context.params["scale"], parts=model_parts(context))
    )


def run_ties(context: MergeContext) -> MergeResult:
    base, others, weights = base_and_others(context)
    params = context.params
    merged = W.ties(base, others, weights, density=params["density"], majority=params["majority"], parts=model_parts(context))
    if context.params["scale"] != 1.0:  # λ on the merged task vector, as in task arithmetic
        merged = {k: base[k] + context.params["scale"] * (v - base[k]) if v.is_floating_point() else v for k, v in merged.items()}
    return merged_result(context, merged)


def run_dare(context: MergeContext) -> MergeResult:
    base, others, weights = base_and_others(context)
    merged = W.dare(
        base,
        others,
        weights,
        density=context.params["density"],
        rescale=context.params["rescale"],
        sign_election=context.params["ties"],
        generator=context.generator(),
        parts=model_parts(context),
    )
    return merged_result(context, merged)


def run_slerp(context: MergeContext) -> MergeResult:
    """t is measured from ``base_model`` (the first model when the recipe names none), as mergekit."""
    base, (other,), _ = base_and_others(context)
    return merged_result(context, W.slerp(base, other, context.params["t"], parts=model_parts(context)))


def base_and_others(context: MergeContext) -> tuple[StateDict, list[StateDict], list[float]]:
    """The base model's state dict, the other models' and their weights."""
    base = context.base.model.state_dict()
    others = [m.model.state_dict() for m in context.others]
    return base, others, [m.weight for m in context.others]


def model_parts(context: MergeContext) -> dict[str, tuple[int, ...] | W.Joined]:
    """The base model's parameters that are several Hugging Face tensors, merged part by part, and
    those that are one, merged as one."""
    return merge_parts(context.base.model)


def merged_result(context: MergeContext, state: StateDict) -> MergeResult:
    """``state`` in a copy of the base model; held-out loss and accuracy of every source and
    the merge, when the recipe has data."""
    merged = copy.deepcopy(context.base.model)
    merged.load_state_dict(state)
    result = MergeResult(merged)
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
