"""The ``stitch`` merge method: score layer pairs, fine-tune the best, run the controls.

Every pair is judged on the task's held-out data — loss, bits per token and per byte for a
language model (pairs ranked by held-out loss), accuracy for a classifier (ranked by
accuracy) — with the map's held-out R² and CKA before/after (a diagnostic only, blind to
orthogonal maps). The best ``finetune_pairs`` are fine-tuned (``finetune``: the stitch, or
the stitch and B's next norms; ``learn``: the whole map, or a per-feature output scale and
the bias on the closed-form directions, or both) and the best after fine-tuning is the
output model. Controls at that pair: a random orthogonal map, the map fitted at A's farthest
layer (wrong depth) and the map fitted on a shuffled pairing of A's and B's tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ssmgraph.graph.compile import count_parameters
from ssmgraph.graph.model import CompiledModel
from ssmgraph.merge import maps
from ssmgraph.merge.context import MergeContext, MergeError, MergeResult
from ssmgraph.merge.similarity import linear_cka
from ssmgraph.merge.stitch import (
    build_stitched,
    farthest_layer,
    fit_conditioned,
    layer_pairs,
    layer_stack,
    probe,
    read_at,
    resolve_tie,
    stitched_blueprint,
)
from ssmgraph.merge.stitch_report import rank_key, report
from ssmgraph.train.losses import batch_sums
from ssmgraph.train.tasks.base import Task


class RowScale(nn.Module):
    """A parametrisation W ↦ diag(s) W: a learned per-output-feature scale s (from 1) on a weight."""

    def __init__(self, rows: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(rows))

    def forward(self, weight: Tensor) -> Tensor:
        return self.scale[:, None] * weight


def trained_parameters(model: CompiledModel, blueprint: dict[str, Any], finetune: str) -> list[str]:
    """Names of the parameters fine-tuning trains: the stitch (and ``stitch_norm``) and, with
    ``stitch+norm``, the norms B applies next (its first layer after the stitch, or its final
    norm); with ``stitch+block``, that whole first layer (or the final norm)."""
    prefixes = ["stitch.", "stitch_norm."]
    if finetune in ("stitch+norm", "stitch+block"):
        nodes = blueprint["nodes"]
        stack = next((n for n, node in nodes.items() if n.startswith("b_") and node.get("repeat")), None)
        if stack is not None and finetune == "stitch+block":
            prefixes.append(f"{stack}.0.")
        elif stack is not None:
            body = nodes[stack]["body"]["nodes"]
            prefixes += [f"{stack}.0.{n}." for n, node in body.items() if str(node.get("block", "")).startswith("norm.")]
        else:
            prefixes += [
                f"{n}." for n, node in nodes.items() if n.startswith("b_") and str(node.get("block", "")).startswith("norm.")
            ]
    return [name for name, _ in model.named_parameters() if any(name.startswith(p) for p in prefixes)]


@contextmanager
def _learning(model: CompiledModel, learn: str) -> Iterator[None]:
    """The stitch's weight as diag(s) W while inside (``learn``: scale, map+scale), folded back after."""
    stitch = model.get_submodule("stitch")
    if learn != "map":
        parametrize.register_parametrization(stitch, "weight", RowScale(stitch.weight.shape[0]))
    try:
        yield
    finally:
        if learn != "map":
            parametrize.remove_parametrizations(stitch, "weight", leave_parametrized=True)


def finetune(model: CompiledModel, blueprint: dict[str, Any], task: Task, p: dict[str, Any], batch_size: int, seed: int) -> int:
    """Train the stitch (and, as ``p`` says, B's next norms) on the task loss; returns how many
    parameters trained. The rest of the model stays frozen."""
    names = set(trained_parameters(model, blueprint, p["finetune"]))
    with _learning(model, p["learn"]):
        frozen = {"stitch.parametrizations.weight.original"} if p["learn"] == "scale" else set()
        for name, param in model.named_parameters():
            param.requires_grad_((name in names or name.startswith("stitch.")) and name not in frozen)
        params = [param for param in model.parameters() if param.requires_grad]
        count = sum(param.numel() for param in params)
        optimizer = torch.optim.Adam(params, lr=p["lr"])
        data = torch.Generator().manual_seed(seed + 7)
        model.train()
        for _ in range(p["finetune_steps"]):
            batch = task.sample(batch_size, data, "train")
            sums = batch_sums(task.kind, model(batch.inputs), batch.targets, task.tolerance)
            loss = sums.loss / sums.count.clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    for param in model.parameters():
        param.requires_grad_(True)
    return count


class Search:
    """One stitch run's probes, options and evaluations."""

    def __init__(self, context: MergeContext):
        self.context, self.p, self.task = context, context.params, context.task
        assert self.task is not None
        data = context.recipe.data
        self.batch_size, self.seed = data.batch_size, context.recipe.seed
        self.a, self.b = context.base, context.others[0]
        train_gen = context.generator(11)
        probe_batches = [self.task.sample(data.batch_size, train_gen, "train") for _ in range(self.p["probe_batches"])]
        held_out = list(self.task.eval_batches(data.batch_size, size=data.eval_size))
        (self.feats_a, self.labels), (self.test_a, _) = probe(self.a, self.task, probe_batches, held_out)
        (self.feats_b, _), (self.test_b, _) = probe(self.b, self.task, probe_batches, held_out)
        self.tie, self.tie_info = resolve_tie(self.a, self.b, self.p["tie"])
        self._read: dict[tuple[str, int], Tensor] = {}

    def read(self, split: str, i: int) -> Tensor:
        """A's probe (``train``) or held-out (``test``) states after layer i as the map reads them
        (:func:`read_at`), computed once per layer however many pairs and controls use them."""
        if (split, i) not in self._read:
            states = self.feats_a if split == "train" else self.test_a
            self._read[split, i] = read_at(self.a, states[i], i, self.p["at"])
        return self._read[split, i]

    def fit(self, i: int, j: int, shuffle: bool = False) -> tuple[Tensor, Tensor]:
        """The map from A's layer i to B's layer j (on a random pairing of the tokens with ``shuffle``)."""
        X, Y = self.read("train", i), self.feats_b[j]
        if shuffle:
            Y = Y[torch.randperm(Y.shape[0], generator=self.context.generator(17))]
        p = self.p
        return fit_conditioned(p["estimator"], p["condition"], X, Y, self.labels, p["ridge"], self.seed, p["cca_dims"])

    def build(self, i: int, j: int, weight: Tensor, bias: Tensor) -> CompiledModel:
        return build_stitched(self.a, self.b, i, j, weight, bias, at=self.p["at"], tie=self.tie)

    def tune(self, model: CompiledModel, i: int, j: int) -> int:
        blueprint = stitched_blueprint(self.a, self.b, i, j, at=self.p["at"], tie=self.tie)
        return finetune(model, blueprint, self.task, self.p, self.batch_size, self.seed)

    def score(self, i: int, j: int, weight: Tensor, bias: Tensor) -> tuple[dict[str, float], CompiledModel]:
        """The pair's held-out figures, and its stitched model (closed form: to fine-tune or keep)."""
        test_a = self.read("test", i)
        mapped = test_a @ weight.T.double() + bias.double()
        model = self.build(i, j, weight, bias)
        figures = {
            **self.context.evaluate(model),
            "r2": float(maps.r2_score(mapped, self.test_b[j])),
            "cka_before": float(linear_cka(test_a, self.test_b[j])),
            "cka_after": float(linear_cka(mapped, self.test_b[j])),
        }
        return figures, model

    def controls(self, i: int, j: int, weight: Tensor, layers_a: int) -> dict[str, Any]:
        """A random orthogonal map of the same scale, the map fitted at A's farthest layer, and
        the map fitted on shuffled token pairs, each at B's layer j (fine-tuned like the stitch
        with ``finetune_controls``)."""
        rand = maps.random_orthogonal_map(weight.shape[1], weight.shape[0], self.seed)
        scale = weight.norm() / rand.weight.norm().clamp_min(1e-12)
        r_weight = (rand.weight * scale).to(weight.dtype)
        mean_a = self.read("test", i).mean(0)
        r_bias = (self.test_b[j].mean(0) - mean_a @ r_weight.T.double()).to(weight.dtype)
        runs = {"random orthogonal map": (i, r_weight, r_bias)}
        far = farthest_layer(i, layers_a)
        if far != i:
            runs[f"wrong depth ({self.a.name}.{far} → {self.b.name}.{j + 1})"] = (far, *self.fit(far, j))
        runs["shuffled token pairing"] = (i, *self.fit(i, j, shuffle=True))
        out = {}
        for name, (layer, w, bias) in runs.items():
            model = self.build(layer, j, w, bias)
            out[name] = {"layer_a": layer, "closed_form": self.context.evaluate(model)}
            if self.p["finetune_controls"] and self.p["finetune_steps"] > 0:
                self.tune(model, layer, j)
                out[name]["finetuned"] = self.context.evaluate(model)
        return out


def run_stitch(context: MergeContext) -> MergeResult:
    p = context.params
    sa, sb = layer_stack(context.base), layer_stack(context.others[0])
    forced = p["layer_a"] >= 0 or p["layer_b"] >= 0
    if forced and not (0 <= p["layer_a"] < sa.layers and 0 <= p["layer_b"] < sb.layers):
        raise MergeError(
            f"layer_a must be in 0..{sa.layers - 1} and layer_b in 0..{sb.layers - 1} (both given), got {p['layer_a']} and {p['layer_b']}"
        )
    search = Search(context)
    a, b, task = search.a, search.b, search.task
    pairs = [(p["layer_a"], p["layer_b"])] if forced else layer_pairs(sa.layers, sb.layers, p["pairs"])
    sources = {a.name: context.evaluate(a.model), b.name: context.evaluate(b.model)}
    keep = max(1, p["finetune_pairs"]) if p["finetune_steps"] > 0 else 1
    maps_at, scored, best = {}, {}, []
    for n, (i, j) in enumerate(pairs):
        maps_at[i, j] = search.fit(i, j)
        scored[f"{i},{j}"], model = search.score(i, j, *maps_at[i, j])
        # the scored models of the best `keep` pairs so far (by rank, then order), fine-tuned or kept below
        best = sorted([*best, (rank_key(task.kind, scored[f"{i},{j}"]), n, (i, j), model)], key=lambda c: c[:2])[:keep]
    candidates = []
    for _, _, (i, j), model in best:
        entry: dict[str, Any] = {"layer_a": i, "layer_b": j, "closed_form": scored[f"{i},{j}"]}
        trained = maps_at[i, j][0].numel() + maps_at[i, j][1].numel()
        if p["finetune_steps"] > 0:
            trained = search.tune(model, i, j)
            entry["finetuned"] = context.evaluate(model)
        entry["trained_parameters"] = trained
        candidates.append((entry, model))
    entry, model = min(candidates, key=lambda c: rank_key(task.kind, c[0].get("finetuned", c[0]["closed_form"])))
    i, j = entry["layer_a"], entry["layer_b"]
    figures: dict[str, Any] = {
        "sources": sources,
        "pairs": scored,
        "selected_by": "accuracy" if task.kind == "classify" else "loss",
        "candidates": [c[0] for c in candidates],
        "best": entry,
        "controls": search.controls(i, j, maps_at[i, j][0], sa.layers),
        "tie": search.tie_info,
        "parameters": {
            "trained": entry["trained_parameters"],
            "model": count_parameters(model),
        },
    }
    figures["parameters"]["ratio"] = figures["parameters"]["trained"] / figures["parameters"]["model"]
    result = MergeResult(model, metrics=figures)
    report(context, result, figures, (sa.layers, sb.layers), len(pairs) > 1)
    return result
