"""Training several models as one joint model (`mutual`, `distill`): build, train, view, measure.

:func:`build_joint` composes the recipe's models into one blueprint (:mod:`ssmgraph.merge.compose`)
and loads their weights; :func:`train_joint` runs AdamW with a warm-up and cosine schedule on a
loss function of one batch; :func:`view` builds one part (a model, or the ensemble) alone.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor

from ssmgraph.blueprint import Blueprint
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.graph.model import CompiledModel
from ssmgraph.merge.compose import compose, model_taps, state_from_sources
from ssmgraph.merge.consistency import depth_pairs, kl
from ssmgraph.merge.context import MergeContext, MergeError
from ssmgraph.merge.models import blueprint_of
from ssmgraph.merge.similarity import linear_cka
from ssmgraph.optim import param_groups
from ssmgraph.train.config import scheduled_lr
from ssmgraph.train.tasks.base import IGNORE, Task

LossFn = Callable[[int, Tensor, Tensor], tuple[Tensor, dict[str, float]]]
"""(step, inputs, targets) -> (loss, its parts for the log)."""


def build_joint(context: MergeContext, names: list[str], *, share_embedding: bool) -> CompiledModel:
    """The joint model of the recipe's models ``names``, holding their weights."""
    chosen = [m for m in context.models if m.name in names]
    sources = {m.name: blueprint_of(m.model) for m in chosen}
    joint_blueprint = compose(sources, d_common=context.params["d_common"], share_embedding=share_embedding)
    torch.manual_seed(context.recipe.seed)
    joint = compile_blueprint(Blueprint.from_dict(joint_blueprint, source="<joint blueprint>"))
    state = state_from_sources({m.name: m.model.state_dict() for m in chosen}, joint)
    joint.load_state_dict(state, strict=False)
    return joint


def view(joint: CompiledModel, name: str) -> CompiledModel:
    """One part of ``joint`` (a model's name, or ``ensemble``) as a model of its own."""
    model = compile_blueprint(joint.blueprint, model=name)
    own = model.state_dict().keys()
    model.load_state_dict({k: v for k, v in joint.state_dict().items() if k in own})
    return model


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


def train_joint(
    joint: CompiledModel,
    loss_fn: LossFn,
    task: Task,
    params: Mapping[str, Any],
    seed: int,
    *,
    progress: bool = True,
    label: str = "",
) -> list[dict[str, float]]:
    """Train the trainable parameters of ``joint`` in place on ``loss_fn``; returns the logged
    losses (every 10 steps). The batches depend on ``seed`` only, so runs compare on one data order."""
    groups = param_groups(joint, lr=params["lr"], weight_decay=params["weight_decay"])
    for group in groups:
        group["base_lr"] = group.get("lr", params["lr"])
    optimizer = torch.optim.AdamW(groups, lr=params["lr"], betas=(0.9, 0.98))
    trainable = [p for group in groups for p in group["params"]]
    data = torch.Generator().manual_seed(seed)
    log = []
    warmup = max(1, params["steps"] // 20)  # then cosine down to lr / 10
    joint.train()
    with _bar(progress, params["steps"], label) as update:
        for step in range(params["steps"]):
            scale = scheduled_lr(step, params["steps"], params["lr"], warmup) / max(params["lr"], 1e-12)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * scale
            batch = task.sample(params["batch_size"], data, "train")
            loss, parts = loss_fn(step, batch.inputs, batch.targets)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise MergeError(f"joint training diverged at step {step + 1} (loss {value}); lower lr (now {params['lr']:g})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if params["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(trainable, params["grad_clip"])
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
    joined = {n: [torch.cat(x) for x in layers] for n, layers in feats.items()}
    out = {}
    for a_i, a in enumerate(names):
        for b in names[a_i + 1 :]:
            fa, fb = joined[a], joined[b]
            values = [float(linear_cka(fa[i], fb[j])) for i, j in depth_pairs(len(fa), len(fb))]
            out[f"{a}~{b}"] = sum(values) / len(values)
    return out


@torch.no_grad()
def agreement(
    teachers: Mapping[str, torch.nn.Module], students: Mapping[str, torch.nn.Module], task: Task, batch_size: int, size: int
) -> dict[str, dict[str, dict[str, float]]]:
    """How closely each student follows each teacher on held-out inputs, ``{student: {teacher:
    figures}}``: KL(teacher ‖ student) per scored position (nats) and the share of positions
    where their top predictions agree. One pass: each model's logits once per batch."""
    for model in [*teachers.values(), *students.values()]:
        model.eval()
    sums = {(s, t): [0.0, 0.0, 0] for s in students for t in teachers}
    for batch in task.eval_batches(batch_size, size=size):
        taught = {name: _logits(teacher(batch.inputs)) for name, teacher in teachers.items()}
        for s_name, student in students.items():
            s = _logits(student(batch.inputs))
            for t_name, t in taught.items():
                keep = batch.targets != IGNORE if task.kind == "lm" else torch.ones(t.shape[:-1], dtype=torch.bool)
                n = int(keep.sum())
                totals = sums[s_name, t_name]
                totals[0] += float(kl(t, s, 1.0, keep)) * n
                totals[1] += float((t.argmax(-1) == s.argmax(-1))[keep].float().sum())
                totals[2] += n
    return {
        s: {
            t: {"kl": sums[s, t][0] / max(sums[s, t][2], 1), "top1_agreement": sums[s, t][1] / max(sums[s, t][2], 1)}
            for t in teachers
        }
        for s in students
    }


def _logits(out: Tensor | Mapping[str, Tensor]) -> Tensor:
    return next(iter(out.values())) if isinstance(out, Mapping) else out


def metric_columns(task: Task, evaluation: Mapping[str, float]) -> list[tuple[str, float]]:
    """The held-out figures a report shows for ``task``: bits per byte (or per token) and loss
    for language models, accuracy and loss otherwise."""
    if task.kind == "lm":
        if "bits_per_byte" in evaluation:
            return [("bits/byte", evaluation["bits_per_byte"]), ("loss", evaluation["loss"])]
        return [("bits/token", evaluation["bits"]), ("loss", evaluation["loss"])]
    return [("accuracy", evaluation["accuracy"]), ("loss", evaluation["loss"])]
