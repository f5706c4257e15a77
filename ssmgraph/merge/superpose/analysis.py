"""Measuring the superposed model on held-out data: bits per byte on both languages, the
weight-space baselines (grid-searched linear interpolation and task arithmetic), a per-layer
analysis (α, reconstruction error, polysemantic units) and the plots."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ssmgraph.graph.model import CompiledModel
from ssmgraph.merge.compare import tapped
from ssmgraph.merge.context import MergeContext
from ssmgraph.merge.models import LoadedModel
from ssmgraph.merge.plots import curves, pyplot
from ssmgraph.merge.superpose.model import blends
from ssmgraph.merge.superpose.training import layer_states, recon_error, specialist_states
from ssmgraph.train.tasks.base import IGNORE, Task

Score = tuple[float, float, int, int]
"""Held-out bits per byte on A's data and on B's, and how many sequences each was measured on."""


@torch.no_grad()
def bits_per_byte(model: nn.Module, task: Task, batch_size: int, limit: int) -> tuple[float, int]:
    """Held-out bits per token (per byte for byte-level text) over at most ``limit`` windows."""
    total, count, sequences = 0.0, 0, 0
    model.eval()
    for batch in task.eval_batches(batch_size, size=limit):
        logits = model(batch.inputs)
        scored = batch.targets != IGNORE
        total += float(F.cross_entropy(logits.float()[scored], batch.targets[scored], reduction="sum"))
        count += int(scored.sum())
        sequences += batch.inputs.shape[0]
    return total / max(count, 1) / math.log(2), sequences


def _interpolated(a: LoadedModel, b: LoadedModel, t: float) -> CompiledModel:
    model = copy.deepcopy(a.model)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    model.load_state_dict({k: sa[k] + t * (sb[k] - sa[k]) if sa[k].is_floating_point() else sa[k] for k in sa})
    return model


def _task_arithmetic(a: LoadedModel, b: LoadedModel, base: CompiledModel, scale: float) -> CompiledModel:
    model = copy.deepcopy(base)
    s0, sa, sb = base.state_dict(), a.model.state_dict(), b.model.state_dict()
    model.load_state_dict(
        {k: s0[k] + scale * ((sa[k] - s0[k]) + (sb[k] - s0[k])) if s0[k].is_floating_point() else s0[k] for k in s0}
    )
    return model


def interpolation_candidates(a: LoadedModel, b: LoadedModel) -> dict[str, CompiledModel]:
    """The linear-interpolation baseline's grid: (1 − t)·A + t·B for t = 0, 0.1, ..., 1."""
    return {f"{t:.1f}": _interpolated(a, b, t) for t in [i / 10 for i in range(11)]}


def task_arithmetic_candidates(a: LoadedModel, b: LoadedModel, base: CompiledModel) -> dict[str, CompiledModel]:
    """The task-arithmetic baseline's grid: base + λ·(task vector A + task vector B) for λ = 0.25 ... 1."""
    return {f"{s:.2f}": _task_arithmetic(a, b, base, s) for s in (0.25, 0.5, 0.75, 1.0)}


def bits_per_byte_on_both(model: nn.Module, tasks: tuple[Task, Task], batch_size: int, limit: int) -> Score:
    """:func:`bits_per_byte` on A's data and on B's."""
    bpb_a, n_a = bits_per_byte(model, tasks[0], batch_size, limit)
    bpb_b, n_b = bits_per_byte(model, tasks[1], batch_size, limit)
    return bpb_a, bpb_b, n_a, n_b


def best_of(
    candidates: Mapping[str, nn.Module], tasks: tuple[Task, Task], batch_size: int, limit: int
) -> tuple[str, Score, dict[str, list[float]]]:
    """The candidate with the lowest mean bits per byte over both languages (a grid search)."""
    scores = {name: bits_per_byte_on_both(m, tasks, batch_size, limit) for name, m in candidates.items()}
    best = min(scores, key=lambda k: scores[k][0] + scores[k][1])
    return best, scores[best], {k: [v[0], v[1]] for k, v in scores.items()}


@torch.no_grad()
def layer_analysis(
    context: MergeContext, model: CompiledModel, a: LoadedModel, b: LoadedModel, tasks: tuple[Task, Task]
) -> dict[str, Any]:
    """Per-layer α, reconstruction error, polysemantic neurons; hidden states for the plots."""
    batch_size = context.recipe.data.batch_size
    batches = [next(iter(task.eval_batches(batch_size))) for task in tasks]
    hidden, targets = [], []
    for batch, specialist in zip(batches, (a, b)):
        _, taps = model(batch.inputs, taps=["hidden"])
        hidden.append(layer_states(taps))
        probe = tapped(specialist.model, specialist.name)
        targets.append(specialist_states(probe, specialist.name, batch.inputs, model.nodes["embed_blend"].out_type.dim))
    alphas = [float(m.alpha.mean()) for m, _ in blends(model, len(hidden[0]))]
    rows, recon, poly = [], [], []
    for layer in range(len(hidden[0])):
        nmse = float(
            recon_error([torch.cat([hidden[0][layer], hidden[1][layer]])], [torch.cat([targets[0][layer], targets[1][layer]])])
        )
        m_a = hidden[0][layer].abs().mean((0, 1))
        m_b = hidden[1][layer].abs().mean((0, 1))
        share = float(((m_a > 0.05) & (m_b > 0.05)).float().mean())
        selectivity = float(((m_a - m_b).abs() / (m_a + m_b).clamp_min(1e-12)).mean())
        recon.append(nmse)
        poly.append({"share": share, "mean_selectivity": selectivity})
        rows.append([layer, alphas[layer + 1], nmse, share, selectivity])
    return {
        "alpha": alphas,
        "reconstruction_nmse": recon,
        "polysemantic": poly,
        "_layer_rows": rows,
        "_states": [[h.reshape(-1, h.shape[-1]) for h in hs] for hs in hidden],
    }


def draw_plots(context: MergeContext, figures: dict[str, Any], log: list[dict[str, float]]) -> list[str]:
    """training.png, alpha.png, trajectories.png and tsne.png in the output folder (their names);
    takes the hidden states :func:`layer_analysis` left in ``figures``."""
    states = figures.pop("_states")
    out = context.out_dir
    steps = [r["step"] for r in log]
    curves(
        {"LM loss": (steps, [r["lm"] for r in log]), "reconstruction (NMSE)": (steps, [r["recon"] for r in log])},
        "step",
        "loss",
        "superposition training",
        out / "training.png",
        log_y=True,
    )
    depth = list(range(len(figures["alpha"])))
    curves(
        {"α": (depth, figures["alpha"])},
        "depth (0: embedding, last: head)",
        "α (0: A, 1: B)",
        "blend along depth",
        out / "alpha.png",
    )
    plt = pyplot()
    # hidden-state trajectories: each language's mean state per layer, in the top-2 PCA plane
    means = torch.stack([torch.stack([h.mean(0) for h in hs]) for hs in states])  # (2, L, D)
    flat = means.reshape(-1, means.shape[-1])
    _, _, v = torch.pca_lowrank(flat - flat.mean(0), q=2, center=False)
    path = (means - flat.mean(0)) @ v
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for lang, name in enumerate(("A's data", "B's data")):
        ax.plot(path[lang, :, 0], path[lang, :, 1], "o-", label=name)
        ax.annotate("layer 0", path[lang, 0].tolist(), fontsize=7)
    ax.set_title("hidden-state trajectories (mean per layer, PCA)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "trajectories.png")
    plt.close(fig)
    written = ["training.png", "alpha.png", "trajectories.png"]
    last = [s[-1] for s in states]
    per = min(500, *(x.shape[0] for x in last))
    generator = torch.Generator().manual_seed(0)
    points = torch.cat([x[torch.randperm(x.shape[0], generator=generator)[:per]] for x in last]).float()
    try:
        from sklearn.manifold import TSNE  # optional dependency: imported only to draw this plot

        embedded = torch.from_numpy(TSNE(n_components=2, init="pca", random_state=0, perplexity=30).fit_transform(points.numpy()))
        title = "t-SNE of last-layer hidden states"
    except ImportError:  # scikit-learn is optional: fall back to PCA and say so
        _, _, v = torch.pca_lowrank(points, q=2)
        embedded, title = (points - points.mean(0)) @ v, "PCA of last-layer hidden states (install scikit-learn for t-SNE)"
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.scatter(embedded[:per, 0], embedded[:per, 1], s=3, label="A's data")
    ax.scatter(embedded[per:, 0], embedded[per:, 1], s=3, label="B's data")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "tsne.png")
    plt.close(fig)
    return [*written, "tsne.png"]
