"""Mutual / consistency training (seeds 000/001): models of any architectures, trained together.

The models are composed into one joint blueprint (:mod:`ssmgraph.merge.compose`) that
shares a token embedding and taps each model's hidden states. Each step, on one batch:

    loss = Σ_k CE(y, p_k)                                       task loss of every model
         + kl_weight · Σ_k 1/(K−1) Σ_{l≠k} τ² KL(p_l ‖ p_k)       deep mutual learning (peers detached)
         + feature_weight · mean over pairs MSE(LN P_a h_a, LN P_b h_b)   feature consistency
         + distill_weight · Σ_k τ² KL(p_teacher ‖ p_k)            optional teacher

P are learnable projections into ``d_common`` features and LN a parameter-free layer norm
(projections could otherwise collapse both sides to zero to zero the loss). Layers are
paired by relative depth. The result is the joint model (whose ``ensemble`` output averages
the models' logits), saved as the output; each model alone under ``models/<name>``.

References: Zhang et al. 2018, Deep Mutual Learning; Hinton et al. 2015, distillation.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor

from ssmgraph.blueprint import Blueprint
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.graph.model import CompiledModel
from ssmgraph.merge.compose import compose, model_taps, state_from_sources
from ssmgraph.merge.context import MergeContext, MergeError, MergeResult
from ssmgraph.merge.models import blueprint_of
from ssmgraph.merge.plots import curves
from ssmgraph.merge.similarity import linear_cka
from ssmgraph.optim import param_groups
from ssmgraph.serialization import load as load_model
from ssmgraph.train.tasks.base import IGNORE, Task


@dataclass(frozen=True)
class Weights:
    kl: float
    feature: float
    distill: float
    temperature: float


def _kl(target_logits: Tensor, logits: Tensor, tau: float, keep: Tensor | None) -> Tensor:
    """τ² KL(softmax(target/τ) ‖ softmax(logits/τ)), averaged over the scored positions."""
    target = F.log_softmax(target_logits.float() / tau, -1)
    log_p = F.log_softmax(logits.float() / tau, -1)
    per = (target.exp() * (target - log_p)).sum(-1)
    if keep is not None:
        per = per[keep]
    return per.mean() * tau**2


def _task_loss(task: Task, logits: Tensor, targets: Tensor) -> Tensor:
    if task.kind == "lm":
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)
    if task.kind == "classify":
        return F.cross_entropy(logits.float(), targets)
    raise MergeError(f"mutual training needs a classification or language-model task, not {task.kind!r}")


def depth_pairs(n_a: int, n_b: int) -> list[tuple[int, int]]:
    """Layer i of the shallower model with the layer of the other at the same relative depth."""
    if n_a <= n_b:
        return [(i, round((i + 1) * n_b / n_a) - 1) for i in range(n_a)]
    return [(j, i) for i, j in depth_pairs(n_b, n_a)]


def _feature_loss(taps: Mapping[str, Tensor], names: list[str]) -> Tensor:
    losses = []
    for a_i, a in enumerate(names):
        for b in names[a_i + 1 :]:
            fa, fb = model_taps(taps, a, "p"), model_taps(taps, b, "p")
            for i, j in depth_pairs(len(fa), len(fb)):
                za = F.layer_norm(fa[i].float(), fa[i].shape[-1:])
                zb = F.layer_norm(fb[j].float(), fb[j].shape[-1:])
                losses.append(F.mse_loss(za, zb))
    return torch.stack(losses).mean()


def joint_loss(
    joint: CompiledModel, names: list[str], task: Task, inputs: Tensor, targets: Tensor, w: Weights, teacher: Any = None
) -> tuple[Tensor, dict[str, float]]:
    """The training loss of one batch, and its parts (for the log)."""
    need_taps = w.feature > 0 and len(names) > 1
    out, taps = joint(inputs, taps=[f"{n}.p" for n in names]) if need_taps else (joint(inputs), {})
    if not isinstance(out, Mapping):
        out = {f"{names[0]}.logits": out}
    logits = {n: next(v for k, v in out.items() if k.startswith(n + ".")) for n in names}
    keep = (targets != IGNORE) if task.kind == "lm" else None
    parts = {f"ce_{n}": _task_loss(task, logits[n], targets) for n in names}
    total = sum(parts.values())
    if w.kl > 0 and len(names) > 1:
        pairs = [(teacher, student) for student in names for teacher in names if teacher != student]
        kl = sum(_kl(logits[teacher].detach(), logits[student], w.temperature, keep) for teacher, student in pairs) / (
            len(names) - 1
        )
        parts["kl"], total = kl, total + w.kl * kl
    if need_taps:
        feature = _feature_loss(taps, names)
        parts["feature"], total = feature, total + w.feature * feature
    if teacher is not None and w.distill > 0:
        with torch.no_grad():
            teacher_logits = teacher(inputs)
        distill = sum(_kl(teacher_logits, logits[k], w.temperature, keep) for k in names)
        parts["distill"], total = distill, total + w.distill * distill
    return total, {k: float(v.detach()) for k, v in parts.items()}


def _lr_at(step: int, steps: int, lr: float) -> float:
    warmup = max(1, steps // 20)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@contextlib.contextmanager
def _bar(enabled: bool, total: int, label: str) -> Iterator[Any]:
    if not enabled:
        yield lambda step, text: None
        return
    with Progress(
        TextColumn(f"{label} {{task.description}}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
    ) as progress:
        bar = progress.add_task("", total=total)
        yield lambda step, text: progress.update(bar, completed=step, description=text)


def train_jointly(
    joint: CompiledModel,
    names: list[str],
    task: Task,
    params: Mapping[str, Any],
    seed: int,
    *,
    teacher: Any = None,
    progress: bool = True,
    label: str = "",
) -> list[dict[str, float]]:
    """Train ``joint`` in place; returns the logged losses (every 10 steps)."""
    weights = Weights(params["kl_weight"], params["feature_weight"], params["distill_weight"], params["temperature"])
    groups = param_groups(joint, lr=params["lr"], weight_decay=params["weight_decay"])
    for group in groups:
        group["base_lr"] = group.get("lr", params["lr"])
    optimizer = torch.optim.AdamW(groups, lr=params["lr"], betas=(0.9, 0.98))
    data = torch.Generator().manual_seed(seed)
    batch_size = params["batch_size"]
    log = []
    joint.train()
    with _bar(progress, params["steps"], label or "+".join(names)) as update:
        for step in range(params["steps"]):
            scale = _lr_at(step, params["steps"], params["lr"]) / max(params["lr"], 1e-12)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * scale
            batch = task.sample(batch_size, data, "train")
            loss, parts = joint_loss(joint, names, task, batch.inputs, batch.targets, weights, teacher)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise MergeError(f"joint training diverged at step {step + 1} (loss {value}); lower lr (now {params['lr']:g})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if params["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(joint.parameters(), params["grad_clip"])
            optimizer.step()
            if (step + 1) % 10 == 0 or step + 1 == params["steps"]:
                log.append({"step": step + 1, "loss": value, **parts})
                update(step + 1, f"loss {value:.3f}")
    joint.eval()
    return log


@torch.no_grad()
def tap_cka(joint: CompiledModel, names: list[str], task: Task, batch_size: int, batches: int = 4) -> dict[str, float]:
    """Linear CKA of the raw hidden states of each model pair at matched relative depth
    (mean over layer pairs), on held-out batches."""
    feats: dict[str, list[list[Tensor]]] = {n: [] for n in names}
    for batch in task.eval_batches(batch_size, size=batch_size * batches):
        _, taps = joint(batch.inputs, taps=[f"{n}.h" for n in names])
        for n in names:
            layers = model_taps(taps, n, "h")
            if not feats[n]:
                feats[n] = [[] for _ in layers]
            for store, t in zip(feats[n], layers):
                store.append(t.reshape(-1, t.shape[-1]).double())
    out = {}
    for a_i, a in enumerate(names):
        for b in names[a_i + 1 :]:
            fa = [torch.cat(x) for x in feats[a]]
            fb = [torch.cat(x) for x in feats[b]]
            values = [float(linear_cka(fa[i], fb[j])) for i, j in depth_pairs(len(fa), len(fb))]
            out[f"{a}~{b}"] = sum(values) / len(values)
    return out


def _build_joint(context: MergeContext, names: list[str]) -> CompiledModel:
    chosen = [m for m in context.models if m.name in names]
    sources = {m.name: blueprint_of(m.model) for m in chosen}
    joint_blueprint = compose(sources, d_common=context.params["d_common"], share_embedding=context.params["share_embedding"])
    torch.manual_seed(context.recipe.seed)
    joint = compile_blueprint(Blueprint.from_dict(joint_blueprint, source="<joint blueprint>"))
    state = state_from_sources({m.name: m.model.state_dict() for m in chosen}, joint)
    joint.load_state_dict(state, strict=False)
    return joint


def _view(joint: CompiledModel, view: str) -> CompiledModel:
    model = compile_blueprint(joint.blueprint, model=view)
    model.load_state_dict({k: v for k, v in joint.state_dict().items() if k in model.state_dict()})
    return model


def run_mutual(context: MergeContext) -> MergeResult:
    task = context.task
    params = {**context.params, "batch_size": context.recipe.data.batch_size}
    names = [m.name for m in context.models]
    teacher = load_model(context.path(context.params["teacher"])).eval() if context.params["teacher"] else None
    joint = _build_joint(context, names)
    cka_before = tap_cka(joint, names, task, params["batch_size"])
    log = train_jointly(
        joint, names, task, params, context.recipe.seed, teacher=teacher, progress=context.progress, label="mutual"
    )
    cka_after = tap_cka(joint, names, task, params["batch_size"])
    models = {name: _view(joint, name) for name in names}
    evaluation = {name: context.evaluate(model) for name, model in models.items()}
    ensemble = _view(joint, "ensemble") if len(names) > 1 else copy.deepcopy(models[names[0]])
    evaluation["ensemble"] = context.evaluate(ensemble)
    alone: dict[str, dict[str, float]] = {}
    if params["baseline"]:
        solo = {**params, "kl_weight": 0.0, "feature_weight": 0.0}
        for name in names:
            single = _build_joint(context, [name])
            train_jointly(
                single,
                [name],
                task,
                solo,
                context.recipe.seed,
                teacher=teacher,
                progress=context.progress,
                label=f"alone: {name}",
            )
            alone[name] = context.evaluate(_view(single, name))
    rows = [[n, evaluation[n]["accuracy"], alone[n]["accuracy"] if n in alone else "", evaluation[n]["loss"]] for n in names]
    rows.append(["ensemble (mean of logits)", evaluation["ensemble"]["accuracy"], "", evaluation["ensemble"]["loss"]])
    result = MergeResult(
        ensemble,
        metrics={"evaluation": evaluation, "alone": alone, "cka_before": cka_before, "cka_after": cka_after, "log": log},
        models=models,
    )
    result.tables.append(
        (f"Held-out {context.recipe.data.task}", ["model", "accuracy (mutual)", "accuracy (alone)", "loss (mutual)"], rows)
    )
    result.tables.append(
        (
            "Linear CKA of hidden states at matched relative depth",
            ["pair", "before", "after"],
            [[k, cka_before[k], cka_after[k]] for k in cka_before],
        )
    )
    result.plots.append(_plot_losses(context, log))
    result.notes.append(
        "The output folder holds the ensemble (mean of the models' logits, shared embedding); models/<name> holds each model, "
        "embedding included. CKA is a diagnostic (it ignores rotations of the hidden space)."
    )
    return result


def _plot_losses(context: MergeContext, log: list[dict[str, float]]) -> str:
    steps = [r["step"] for r in log]
    series = {key: (steps, [r[key] for r in log]) for key in sorted(log[0]) if key not in ("step", "loss")}
    curves(series, "step", "loss", "mutual training: loss terms", context.out_dir / "losses.png", log_y=True)
    return "losses.png"
