"""Knowledge distillation across architectures (`distill`): teachers of any blueprints into a student.

The recipe's models are composed into one joint blueprint (:mod:`ssmgraph.merge.compose`, no
shared embedding); the teachers' weights are frozen, and so are the projections of their taps,
so the common space is a fixed random projection of each teacher's hidden states that the
student learns to reach. Each step, on one batch:

    loss = (1 − α) · CE(y, p_s)
         + α · 1/T Σ_t τ² KL(p_t ‖ p_s)                                  Hinton et al. 2015
         + feature_weight · mean over teachers and layer pairs MSE(LN P_s h_s, LN P_t h_t)   FitNets

Layers are paired by relative depth. With ``baseline`` the student is also trained alone (α = 0,
no features) with the same steps, data order and starting weights, and the report compares the
two on the task and on their agreement with the teachers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ssmgraph.graph.model import CompiledModel
from ssmgraph.merge.consistency import joint_outputs, kl, pair_feature_loss, split_outputs, task_loss
from ssmgraph.merge.context import MergeContext, MergeError, MergeResult
from ssmgraph.merge.joint import agreement, build_joint, metric_columns, train_joint, view
from ssmgraph.merge.plots import loss_terms
from ssmgraph.train.tasks.base import IGNORE, Task


def distill_loss(
    joint: CompiledModel,
    student: str,
    teachers: list[str],
    task: Task,
    inputs: Tensor,
    targets: Tensor,
    params: dict[str, Any],
) -> tuple[Tensor, dict[str, float]]:
    """The student's loss on one batch, and its parts (for the log)."""
    names = [student, *teachers]
    alpha, tau, feature_weight = params["alpha"], params["temperature"], params["feature_weight"]
    use_features = feature_weight > 0 and bool(teachers)
    logits, taps = joint_outputs(joint, names, inputs, taps=use_features)
    keep = (targets != IGNORE) if task.kind == "lm" else None
    ce = task_loss(task, logits[student], targets)
    parts = {"ce": ce}
    total = (1 - alpha) * ce
    if alpha > 0 and teachers:
        teach = sum(kl(logits[t].detach(), logits[student], tau, keep) for t in teachers) / len(teachers)
        parts["kl"], total = teach, total + alpha * teach
    if use_features:
        feature = torch.stack([loss for t in teachers for loss in pair_feature_loss(taps, student, t)]).mean()
        parts["feature"], total = feature, total + feature_weight * feature
    return total, {k: float(v.detach()) for k, v in parts.items()}


def roles(context: MergeContext) -> tuple[str, list[str]]:
    """The student's name and the teachers', checked."""
    names = [m.name for m in context.models]
    student = context.params["student"] or names[-1]
    if student not in names:
        raise MergeError(
            f"{context.recipe.source}: distill's student {student!r} is not one of the recipe's models ({', '.join(names)})"
        )
    return student, [n for n in names if n != student]


def freeze_teachers(context: MergeContext, joint: CompiledModel, teachers: list[str]) -> None:
    """Teachers' weights (``<teacher>_<key>``) and their taps' projections stop learning."""
    frozen = {f"{m.name}_{key}" for m in context.models if m.name in teachers for key in m.model.state_dict()}
    prefixes = tuple(f"taps.{t}." for t in teachers)
    for name, param in joint.named_parameters():
        if name in frozen or name.startswith(prefixes):
            param.requires_grad_(False)


def _check_vocab(joint: CompiledModel, names: list[str], task: Task) -> None:
    batch = task.sample(1, torch.Generator().manual_seed(0), "train")
    with torch.no_grad():
        logits = split_outputs(joint(batch.inputs), names)
    sizes = {n: v.shape[-1] for n, v in logits.items()}
    if len(set(sizes.values())) > 1:
        raise MergeError(
            f"distill compares output distributions, so the models need one vocabulary (or class set): output sizes {sizes}"
        )


def run_distill(context: MergeContext) -> MergeResult:
    task = context.task
    assert task is not None and context.recipe.data is not None
    params = {**context.params, "batch_size": context.recipe.data.batch_size}
    student, teachers = roles(context)
    joint = build_joint(context, [student, *teachers], share_embedding=False)
    _check_vocab(joint, [student, *teachers], task)
    freeze_teachers(context, joint, teachers)
    teacher_models = {t: view(joint, t) for t in teachers}
    students = {"before": view(joint, student)}  # the student's start, measured with the others after training
    log = train_joint(
        joint,
        lambda step, x, y: distill_loss(joint, student, teachers, task, x, y, params),
        task,
        params,
        context.recipe.seed,
        progress=context.progress,
        label="distill",
    )
    distilled = view(joint, student)
    evaluation = {**{t: context.evaluate(m) for t, m in teacher_models.items()}, student: context.evaluate(distilled)}
    students["distilled"] = distilled
    models = {}
    if params["baseline"]:
        single = build_joint(context, [student], share_embedding=False)
        solo = {**params, "alpha": 0.0, "feature_weight": 0.0}
        train_joint(
            single,
            lambda step, x, y: distill_loss(single, student, [], task, x, y, solo),
            task,
            params,
            context.recipe.seed,
            progress=context.progress,
            label=f"alone: {student}",
        )
        models["alone"] = view(single, student)
        evaluation["alone"] = context.evaluate(models["alone"])
        students["alone"] = models["alone"]
    agreements = agreement(teacher_models, students, task, params["batch_size"], context.recipe.data.eval_size)
    result = MergeResult(
        distilled,
        metrics={"student": student, "teachers": teachers, "evaluation": evaluation, "agreement": agreements, "log": log},
        models=models,
    )
    result.tables.append(_table(context, student, teachers, evaluation, agreements))
    result.plots.append(loss_terms(log, "distillation: loss terms", context.out_dir / "losses.png").name)
    result.notes.append(
        f"The output folder holds the distilled student {student!r}"
        + ("; models/alone the same student trained alone (same steps, data order and start)." if models else ".")
        + " Agreement: KL(teacher ‖ student) in nats per scored position, and the share of top-1 predictions in common."
    )
    return result


def _table(
    context: MergeContext,
    student: str,
    teachers: list[str],
    evaluation: dict[str, dict[str, float]],
    agreements: dict[str, dict[str, dict[str, float]]],
) -> tuple[str, list[str], list[list[Any]]]:
    task = context.task
    assert task is not None
    columns = [label for label, _ in metric_columns(task, evaluation[student])]
    first = teachers[0]
    header = ["model", *columns, f"KL to {first}", f"top-1 agreement with {first}"]
    rows: list[list[Any]] = [[f"teacher {t}", *[v for _, v in metric_columns(task, evaluation[t])], "", ""] for t in teachers]
    labelled = {"distilled": (f"student {student} (distilled)", student), "alone": (f"student {student} (alone)", "alone")}
    for key, (label, name) in labelled.items():
        if name in evaluation:
            agree = agreements[key][first]
            rows.append([label, *[v for _, v in metric_columns(task, evaluation[name])], agree["kl"], agree["top1_agreement"]])
    return f"Held-out {context.recipe.data.task if context.recipe.data else ''}", header, rows
