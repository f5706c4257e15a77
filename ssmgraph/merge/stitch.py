"""Functional-alignment stitching (task-conditioned functional alignment, TCFA): model A up to layer i, a map, model B on.

Both models read the same probe inputs; the hidden states after A's layer i (X, tokens ×
d_A) and after B's layer j (Y, tokens × d_B) are collected under task conditions —
``pooled`` (all tokens) or ``per_class`` (one map per class, averaged into one, as TCFA
sums its per-condition transforms) — and a map T with T(X) ≈ Y is fitted: least squares,
orthogonal Procrustes, CCA, or optimal transport (no pairing needed). Optionally only the
stitch is then fine-tuned on the task. The merged model is a plain blueprint:

    A's nodes before its layer stack → A's layers 0..i → stitch.linear → B's layers j+1.. → B's head

Every layer pair is scored (held-out task accuracy of the stitched model, held-out R² of
the map, CKA before/after — a diagnostic only, blind to orthogonal maps), with controls: a
random orthogonal map and a wrong-depth pair. The best pair (or the one asked for) is the
output model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ssmgraph.blueprint import Blueprint
from ssmgraph.graph.compile import compile_blueprint, count_parameters
from ssmgraph.graph.model import CompiledModel
from ssmgraph.merge import maps
from ssmgraph.merge.compare import tapped
from ssmgraph.merge.compose import layer_stacks, model_taps, rename_node
from ssmgraph.merge.context import MergeContext, MergeError, MergeResult
from ssmgraph.merge.models import LoadedModel, blueprint_of
from ssmgraph.merge.mutual import depth_pairs
from ssmgraph.merge.plots import heatmap
from ssmgraph.merge.similarity import linear_cka
from ssmgraph.train.losses import batch_sums
from ssmgraph.train.tasks.base import IGNORE, Task


@dataclass(frozen=True)
class Stack:
    """A model's layer stack: the ``repeat`` node, its layer count, the body output node,
    and the top-level nodes before and after it."""

    name: str
    layers: int
    out_node: str
    before: list[str]
    after: list[str]


def layer_stack(model: LoadedModel) -> Stack:
    bp = blueprint_of(model.model)
    stacks = layer_stacks(bp)
    if len(stacks) != 1:
        raise MergeError(f"stitching needs a model with one layer stack (a `repeat:` node); {model.name!r} has {len(stacks)}")
    name, out_node = stacks[0]
    order = list(bp["nodes"])
    at = order.index(name)
    return Stack(name, int(bp["nodes"][name]["repeat"]), out_node, order[:at], order[at + 1 :])


def _strip_missing_ties(node: dict[str, Any], kept: set[str]) -> dict[str, Any]:
    ties = {k: r for k, r in node.get("tie", {}).items() if r.split(".")[0] in kept}
    node = {k: v for k, v in node.items() if k != "tie"}
    return {**node, "tie": ties} if ties else node


def stitched_blueprint(a: LoadedModel, b: LoadedModel, i: int, j: int) -> dict[str, Any]:
    """A's nodes up to its layer i, ``stitch``, B's layers after j and B's head (plain dict)."""
    sa, sb = layer_stack(a), layer_stack(b)
    bpa, bpb = blueprint_of(a.model), blueprint_of(b.model)
    if bpa["inputs"] != bpb["inputs"]:
        raise MergeError(f"models {a.name!r} and {b.name!r} read different inputs; a stitched model feeds B's layers from A's")
    d_b = b.model.nodes[f"{sb.name}.0.{sb.out_node}"].out_type.dim
    rename_a = {n: f"a_{n}" for n in sa.before + [sa.name]}
    nodes: dict[str, Any] = {rename_a[n]: rename_node(bpa["nodes"][n], rename_a) for n in sa.before}
    nodes["a_" + sa.name] = {**rename_node(bpa["nodes"][sa.name], rename_a), "repeat": i + 1}
    nodes["stitch"] = {"block": "stitch.linear", "in": "a_" + sa.name, "args": {"dim": d_b}}
    rename_b = {n: f"b_{n}" for n in sb.after}
    rest = sb.layers - j - 1
    rename_b[sb.name] = f"b_{sb.name}" if rest > 0 else "stitch"
    if rest > 0:
        nodes[f"b_{sb.name}"] = {**rename_node(bpb["nodes"][sb.name], {}), "in": "stitch", "repeat": rest}
    kept = set(rename_b.values())
    for n in sb.after:
        nodes[rename_b[n]] = _strip_missing_ties(rename_node(bpb["nodes"][n], rename_b), kept)
    return {
        "ssmgraph": 1,
        "name": f"stitch_{a.name}{i}_{b.name}{j}",
        "doc": f"{a.name!r} up to its layer {i}, a linear stitch, then {b.name!r} from its layer {j + 1} (ssmgraph merge, method stitch).",
        "inputs": bpa["inputs"],
        "nodes": nodes,
        "outputs": {name: rename_b.get(t.split(".")[0], t) for name, t in bpb["outputs"].items()},
    }


def stitched_state(a: LoadedModel, b: LoadedModel, i: int, j: int, weight: Tensor, bias: Tensor) -> dict[str, Tensor]:
    """The stitched model's weights: A's up to layer i, the map, B's after layer j (ties untied)."""
    sa, sb = layer_stack(a), layer_stack(b)
    state: dict[str, Tensor] = {"stitch.weight": weight, "stitch.bias": bias}
    for key, value in a.model.state_dict().items():
        head, _, rest = key.partition(".")
        if head in sa.before or (head == sa.name and int(rest.split(".")[0]) <= i):
            state[f"a_{key}"] = value
    for key, value in b.model.state_dict().items():
        head, _, rest = key.partition(".")
        if head in sb.after:
            state[f"b_{key}"] = value
        elif head == sb.name:
            layer, _, tail = rest.partition(".")
            if int(layer) > j:
                state[f"b_{sb.name}.{int(layer) - j - 1}.{tail}"] = value
    return state


def build_stitched(a: LoadedModel, b: LoadedModel, i: int, j: int, weight: Tensor, bias: Tensor) -> CompiledModel:
    model = compile_blueprint(Blueprint.from_dict(stitched_blueprint(a, b, i, j), source="<stitched blueprint>"))
    state = stitched_state(a, b, i, j, weight.float(), bias.float())
    missing = set(model.state_dict()) - set(state) - set(model.tied)
    if missing:
        raise MergeError(f"stitching {a.name!r} layer {i} into {b.name!r} layer {j}: no weights for {sorted(missing)[:3]}")
    model.load_state_dict(state, strict=False)
    return model.eval()


# ---- probing --------------------------------------------------------------------------------------
@torch.no_grad()
def probe(model: LoadedModel, task: Task, batches: list[Any]) -> tuple[list[Tensor], Tensor]:
    """Hidden states after each layer (tokens × width, float64) and each token's label
    (the sequence's class, or the token's target; -1 where none)."""
    joint = tapped(model.model, model.name)
    layers: list[list[Tensor]] = []
    labels = []
    for batch in batches:
        _, taps = joint(batch.inputs, taps=[f"{model.name}.h"])
        found = model_taps(taps, model.name, "h")
        layers = layers or [[] for _ in found]
        for store, t in zip(layers, found):
            store.append(t.reshape(-1, t.shape[-1]).double())
        length = batch.inputs.shape[1]
        if task.kind == "classify":
            labels.append(batch.targets[:, None].expand(-1, length).reshape(-1))
        else:
            labels.append(
                torch.where(batch.targets == IGNORE, -1, batch.targets).reshape(-1)
                if task.kind == "lm"
                else torch.full((batch.inputs.shape[0] * length,), -1)
            )
    return [torch.cat(x) for x in layers], torch.cat(labels)


def fit_map(estimator: str, X: Tensor, Y: Tensor, ridge: float, seed: int, cca_dims: int = 0) -> Any:
    if estimator == "lstsq":
        scale = float(X.var(0).mean()) * X.shape[0]
        return maps.fit_lstsq(X, Y, ridge=ridge * scale)
    if estimator == "procrustes":
        return maps.fit_procrustes(X, Y, scale=True)
    if estimator == "cca":
        return maps.fit_cca(X, Y, dims=cca_dims or max(1, min(X.shape[1], Y.shape[1]) // 2))[0]
    return maps.fit_ot(X, Y, seed=seed)


def fit_conditioned(
    estimator: str, condition: str, X: Tensor, Y: Tensor, labels: Tensor, ridge: float, seed: int, cca_dims: int = 0
) -> tuple[Tensor, Tensor]:
    """The map's (weight, bias): one fit on all tokens, or the mean of one fit per class (over
    the classes seen at least twice: one row has no covariance to fit, and an LM's 256 byte
    classes often include some seen once)."""
    if condition == "pooled":
        fitted = fit_map(estimator, X, Y, ridge, seed, cca_dims)
        weight, bias = fitted.weight, fitted.bias
    else:
        counts = {c: int((labels == c).sum()) for c in labels.unique().tolist() if c >= 0}
        if not counts:
            raise MergeError("condition 'per_class' needs a classification task (or an LM task, whose targets are the classes)")
        classes = [c for c, n in counts.items() if n >= 2]
        if not classes:
            raise MergeError(
                "condition 'per_class': no class is seen twice in the probe batches; raise `probe_batches` or use condition: pooled"
            )
        fits = [fit_map(estimator, X[labels == c], Y[labels == c], ridge, seed, cca_dims) for c in classes]
        weight, bias = torch.stack([f.weight for f in fits]).mean(0), torch.stack([f.bias for f in fits]).mean(0)
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise MergeError(
            f"the {estimator} map came out non-finite (too few probe rows for the width?); raise `probe_batches` or try estimator: lstsq"
        )
    return weight, bias


def layer_pairs(n_a: int, n_b: int, how: str) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n_a) for j in range(n_b)] if how == "all" else depth_pairs(n_a, n_b)


def finetune_stitch(model: CompiledModel, task: Task, steps: int, lr: float, batch_size: int, seed: int) -> None:
    """Train only ``stitch.weight``/``stitch.bias`` on the task loss."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("stitch."))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    data = torch.Generator().manual_seed(seed + 7)
    model.train()
    for _ in range(steps):
        batch = task.sample(batch_size, data, "train")
        sums = batch_sums(task.kind, model(batch.inputs), batch.targets, task.tolerance)
        loss = sums.loss / sums.count.clamp(min=1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)


def run_stitch(context: MergeContext) -> MergeResult:
    p, task, data = context.params, context.task, context.recipe.data
    a, b = context.base, context.others[0]
    sa, sb = layer_stack(a), layer_stack(b)
    train_gen = context.generator(11)
    probe_batches = [task.sample(data.batch_size, train_gen, "train") for _ in range(p["probe_batches"])]
    held_out = list(task.eval_batches(data.batch_size, size=data.eval_size))
    feats_a, labels = probe(a, task, probe_batches)
    feats_b, _ = probe(b, task, probe_batches)
    test_a, _ = probe(a, task, held_out)
    test_b, _ = probe(b, task, held_out)
    sources = {a.name: context.evaluate(a.model)["accuracy"], b.name: context.evaluate(b.model)["accuracy"]}
    forced = p["layer_a"] >= 0 or p["layer_b"] >= 0
    if forced and not (0 <= p["layer_a"] < sa.layers and 0 <= p["layer_b"] < sb.layers):
        raise MergeError(
            f"layer_a must be in 0..{sa.layers - 1} and layer_b in 0..{sb.layers - 1} (both given), got {p['layer_a']} and {p['layer_b']}"
        )
    pairs = [(p["layer_a"], p["layer_b"])] if forced else layer_pairs(sa.layers, sb.layers, p["pairs"])
    rows, scored, best = [], {}, None
    for i, j in pairs:
        weight, bias = fit_conditioned(
            p["estimator"], p["condition"], feats_a[i], feats_b[j], labels, p["ridge"], context.recipe.seed, p["cca_dims"]
        )
        mapped = test_a[i] @ weight.T.double() + bias.double()
        r2 = float(maps.r2_score(mapped, test_b[j]))
        model = build_stitched(a, b, i, j, weight, bias)
        accuracy = context.evaluate(model)["accuracy"]
        cka = (float(linear_cka(test_a[i], test_b[j])), float(linear_cka(mapped, test_b[j])))
        scored[f"{i},{j}"] = {"accuracy": accuracy, "r2": r2, "cka_before": cka[0], "cka_after": cka[1]}
        rows.append([f"{a.name}.{i} → {b.name}.{j + 1}", accuracy, r2, cka[0], cka[1]])
        if best is None or accuracy > best[2]:
            best = (i, j, accuracy, weight, bias, model)
    assert best is not None
    i, j, accuracy, weight, bias, model = best
    figures: dict[str, Any] = {"sources": sources, "pairs": scored, "best": {"layer_a": i, "layer_b": j, "accuracy": accuracy}}
    if p["finetune_steps"] > 0:
        finetune_stitch(model, task, p["finetune_steps"], p["lr"], data.batch_size, context.recipe.seed)
        figures["best"]["finetuned_accuracy"] = context.evaluate(model)["accuracy"]
    figures["controls"] = _controls(context, a, b, i, j, weight, test_a, test_b, sa.layers)
    stitch_params = weight.numel() + bias.numel()
    figures["parameters"] = {
        "stitch": stitch_params,
        "full_finetune": count_parameters(model),
        "ratio": stitch_params / count_parameters(model),
    }
    result = MergeResult(model, metrics=figures)
    result.tables.append(("Sources (held-out accuracy)", ["model", "accuracy"], [[k, v] for k, v in sources.items()]))
    result.tables.append(
        (f"Stitched ({p['estimator']}, {p['condition']})", ["stitch", "accuracy", "held-out R²", "CKA before", "CKA after"], rows)
    )
    best_rows = [["closed form", accuracy]]
    if "finetuned_accuracy" in figures["best"]:
        best_rows.append([f"stitch fine-tuned {p['finetune_steps']} steps", figures["best"]["finetuned_accuracy"]])
    best_rows += [[f"control: {k}", v["accuracy"]] for k, v in figures["controls"].items()]
    result.tables.append((f"Best pair {a.name}.{i} → {b.name}.{j + 1} and controls", ["model", "accuracy"], best_rows))
    result.tables.append(
        (
            "Parameters trained",
            ["stitch", "full fine-tuning", "ratio"],
            [[stitch_params, figures["parameters"]["full_finetune"], figures["parameters"]["ratio"]]],
        )
    )
    if len(pairs) > 1:
        result.plots.append(_heatmap(context, scored, sa.layers, sb.layers, a.name, b.name))
    result.notes.append(
        "CKA is reported as a diagnostic only: it does not change under orthogonal maps, so it cannot reward a Procrustes stitch."
    )
    return result


def _controls(
    context: MergeContext,
    a: LoadedModel,
    b: LoadedModel,
    i: int,
    j: int,
    weight: Tensor,
    test_a: list[Tensor],
    test_b: list[Tensor],
    layers_a: int,
) -> dict[str, Any]:
    """A random orthogonal map of the same scale at the best pair, and the map fitted at the
    wrong depth (A's first layer into B after its matched layer, or the reverse)."""
    p = context.params
    rand = maps.random_orthogonal_map(weight.shape[1], weight.shape[0], context.recipe.seed)
    scale = weight.norm() / rand.weight.norm().clamp_min(1e-12)
    mean_a, mean_b = test_a[i].mean(0), test_b[j].mean(0)
    r_weight = (rand.weight * scale).to(weight.dtype)
    r_bias = (mean_b - mean_a @ r_weight.T.double()).to(weight.dtype)
    controls = {"random orthogonal map": {"accuracy": context.evaluate(build_stitched(a, b, i, j, r_weight, r_bias))["accuracy"]}}
    wrong_i = 0 if i != 0 else layers_a - 1
    if wrong_i != i:
        probe_gen = context.generator(13)
        batches = [context.task.sample(context.recipe.data.batch_size, probe_gen, "train") for _ in range(p["probe_batches"])]
        fa, labels = probe(a, context.task, batches)
        fb, _ = probe(b, context.task, batches)
        w, bias = fit_conditioned(
            p["estimator"], p["condition"], fa[wrong_i], fb[j], labels, p["ridge"], context.recipe.seed, p["cca_dims"]
        )
        controls[f"wrong depth ({a.name}.{wrong_i} → {b.name}.{j + 1})"] = {
            "accuracy": context.evaluate(build_stitched(a, b, wrong_i, j, w, bias))["accuracy"]
        }
    return controls


def _heatmap(context: MergeContext, scored: Mapping[str, Any], n_a: int, n_b: int, name_a: str, name_b: str) -> str:
    values = torch.full((n_a, n_b), float("nan"))
    for key, figure in scored.items():
        i, j = (int(v) for v in key.split(","))
        values[i, j] = figure["accuracy"]
    heatmap(
        values,
        [f"{name_a}.{i}" for i in range(n_a)],
        [f"{name_b}.{j}" for j in range(n_b)],
        "stitched accuracy (row: A's layer, column: B's layer)",
        context.out_dir / "stitch_accuracy.png",
        "accuracy",
    )
    return "stitch_accuracy.png"
