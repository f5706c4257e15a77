"""Mutual / consistency training (seeds 000/001): models of any architectures, trained together.

The models are composed into one joint blueprint (:mod:`ssmgraph.merge.compose`) that
shares a token embedding and taps each model's hidden states. Each step, on one batch:

    loss = Σ_k CE(y, p_k)                                       task loss of every model
         + kl_weight · Σ_k 1/(K−1) Σ_{l≠k} τ² KL_w(p_l ‖ p_k)     deep mutual learning (peers detached)
           (kl_target: ensemble → Σ_k τ² KL_w(p̄ ‖ p_k), p̄ from the mean of all models' logits)
         + feature_weight · mean over pairs MSE(LN P_a h_a, LN P_b h_b)   feature consistency
         + distill_weight · Σ_k τ² KL(p_teacher ‖ p_k)            optional teacher

P are learnable projections into ``d_common`` features and LN a parameter-free layer norm
(projections could otherwise collapse both sides to zero to zero the loss). Layers are
paired by relative depth. KL_w weighs each position by the peer's confidence in the label
(``peer_weighting``); ``kl_warmup`` ramps both consistency weights up from 0, so that the
peers learn something before they copy each other; ``consistency`` keeps one term only. The result is the joint model (whose ``ensemble`` output averages
the models' logits), saved as the output; each model alone under ``models/<name>``.

References: Zhang et al. 2018, Deep Mutual Learning; Hinton et al. 2015, distillation.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from ssmgraph.graph.model import CompiledModel
from ssmgraph.merge.consistency import (
    feature_loss,
    joint_outputs,
    kl,
    peer_weight,
    task_loss,
)
from ssmgraph.merge.context import MergeContext, MergeResult
from ssmgraph.merge.joint import build_joint, metric_columns, tap_cka, train_joint, view
from ssmgraph.merge.plots import loss_terms
from ssmgraph.serialization import load as load_model
from ssmgraph.train.tasks.base import IGNORE, Task


@dataclass(frozen=True)
class Weights:
    kl: float
    feature: float
    distill: float
    temperature: float
    peer_weighting: str = "uniform"
    target: str = "peers"

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> Weights:
        """The loss weights a recipe's parameters ask for (``consistency`` switches a term off)."""
        mode = params.get("consistency", "both")
        return cls(
            params["kl_weight"] if mode in ("both", "logits") else 0.0,
            params["feature_weight"] if mode in ("both", "features") else 0.0,
            params["distill_weight"],
            params["temperature"],
            params.get("peer_weighting", "uniform"),
            params.get("kl_target", "peers"),
        )

    def ramped(self, step: int, warmup: int) -> Weights:
        """The consistency weights (KL and features) ramped linearly from 0 over ``warmup`` steps."""
        if warmup <= 0 or step >= warmup:
            return self
        scale = (step + 1) / (warmup + 1)
        return replace(self, kl=self.kl * scale, feature=self.feature * scale)


def joint_loss(
    joint: CompiledModel, names: list[str], task: Task, inputs: Tensor, targets: Tensor, w: Weights, teacher: Any = None
) -> tuple[Tensor, dict[str, float]]:
    """The training loss of one batch, and its parts (for the log)."""
    need_taps = w.feature > 0 and len(names) > 1
    logits, taps = joint_outputs(joint, names, inputs, taps=need_taps)
    keep = (targets != IGNORE) if task.kind == "lm" else None
    parts = {f"ce_{n}": task_loss(task, logits[n], targets) for n in names}
    total = sum(parts.values())
    if w.kl > 0 and len(names) > 1:
        mutual = _mutual_kl(logits, names, targets, keep, w)
        parts["kl"], total = mutual, total + w.kl * mutual
    if need_taps:
        feature = feature_loss(taps, names)
        parts["feature"], total = feature, total + w.feature * feature
    if teacher is not None and w.distill > 0:
        with torch.no_grad():
            teacher_logits = teacher(inputs)
        distill = sum(kl(teacher_logits, logits[k], w.temperature, keep) for k in names)
        parts["distill"], total = distill, total + w.distill * distill
    return total, {k: float(v.detach()) for k, v in parts.items()}


def _mutual_kl(logits: Mapping[str, Tensor], names: list[str], targets: Tensor, keep: Tensor | None, w: Weights) -> Tensor:
    """Each model's KL towards its peers (``target: peers``, the mean over the others) or
    towards the ensemble, the mean of all models' logits (``ensemble``); targets detached."""
    if w.target == "ensemble":
        ensemble = torch.stack([logits[n].detach() for n in names]).mean(0)
        weight = peer_weight(ensemble, targets, w.peer_weighting)
        return sum(kl(ensemble, logits[s], w.temperature, keep, weight) for s in names)
    weight = {n: peer_weight(logits[n], targets, w.peer_weighting) for n in names}
    pairs = [(teacher, student) for student in names for teacher in names if teacher != student]
    return sum(kl(logits[t].detach(), logits[s], w.temperature, keep, weight[t]) for t, s in pairs) / (len(names) - 1)


def run_mutual(context: MergeContext) -> MergeResult:
    task = context.task
    params = {**context.params, "batch_size": context.recipe.data.batch_size}
    names = [m.name for m in context.models]
    teacher = load_model(context.path(context.params["teacher"])).eval() if context.params["teacher"] else None
    weights = Weights.of(params)
    joint = build_joint(context, names, share_embedding=params["share_embedding"])
    cka_before = tap_cka(joint, names, task, params["batch_size"])

    def loss_fn(step: int, inputs: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, float]]:
        return joint_loss(joint, names, task, inputs, targets, weights.ramped(step, params["kl_warmup"]), teacher)

    log = train_joint(joint, loss_fn, task, params, context.recipe.seed, progress=context.progress, label="mutual")
    cka_after = tap_cka(joint, names, task, params["batch_size"])
    models = {name: view(joint, name) for name in names}
    evaluation = {name: context.evaluate(model) for name, model in models.items()}
    ensemble = view(joint, "ensemble") if len(names) > 1 else copy.deepcopy(models[names[0]])
    evaluation["ensemble"] = context.evaluate(ensemble)
    alone: dict[str, dict[str, float]] = {}
    if params["baseline"]:
        solo = replace(weights, kl=0.0, feature=0.0)
        for name in names:
            single = build_joint(context, [name], share_embedding=params["share_embedding"])

            def solo_loss(step: int, inputs: Tensor, targets: Tensor, single: CompiledModel = single, name: str = name) -> Any:
                return joint_loss(single, [name], task, inputs, targets, solo, teacher)

            train_joint(single, solo_loss, task, params, context.recipe.seed, progress=context.progress, label=f"alone: {name}")
            alone[name] = context.evaluate(view(single, name))
    result = MergeResult(
        ensemble,
        metrics={
            "evaluation": evaluation,
            "alone": alone,
            "gain": _gains(task, evaluation, alone),
            "cka_before": cka_before,
            "cka_after": cka_after,
            "log": log,
        },
        models=models,
    )
    result.tables.append(_table(context, names, evaluation, alone))
    result.tables.append(
        (
            "Linear CKA of hidden states at matched relative depth",
            ["pair", "before", "after"],
            [[k, cka_before[k], cka_after[k]] for k in cka_before],
        )
    )
    result.plots.append(loss_terms(log, "mutual training: loss terms", context.out_dir / "losses.png").name)
    result.notes.append(
        "The output folder holds the ensemble (mean of the models' logits, shared embedding); models/<name> holds each model, "
        "embedding included. CKA is a diagnostic (it ignores rotations of the hidden space)."
    )
    return result


def _gains(
    task: Task, evaluation: Mapping[str, Mapping[str, float]], alone: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """Per model, how much training together helped over training alone: accuracy points
    for classifiers, bits saved (per byte, or per token) for language models."""
    gains = {}
    for name, solo in alone.items():
        (_, together_value), *_ = metric_columns(task, evaluation[name])
        (_, alone_value), *_ = metric_columns(task, solo)
        gains[name] = alone_value - together_value if task.kind == "lm" else 100 * (together_value - alone_value)
    return gains


def _table(
    context: MergeContext,
    names: list[str],
    evaluation: Mapping[str, Mapping[str, float]],
    alone: Mapping[str, Mapping[str, float]],
) -> tuple[str, list[str], list[list[Any]]]:
    task = context.task
    columns = metric_columns(task, evaluation[names[0]])
    header = ["model"] + [f"{label} (together)" for label, _ in columns] + [f"{columns[0][0]} (alone)"]
    rows = []
    for name in [*names, "ensemble"]:
        together = [value for _, value in metric_columns(task, evaluation[name])]
        solo = metric_columns(task, alone[name])[0][1] if name in alone else ""
        rows.append([name if name != "ensemble" else "ensemble (mean of logits)", *together, solo])
    return f"Held-out {context.recipe.data.task}", header, rows
