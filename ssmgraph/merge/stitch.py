"""Functional-alignment stitching: the surgery (model A up to layer i, a map, model B on) and the map's fit.

Both models read the same probe inputs; the hidden states after A's layer i (X, tokens ×
d_A) and after B's layer j (Y, tokens × d_B) are collected under task conditions —
``pooled`` (all tokens) or ``per_class`` (one map per class, averaged into one, as TCFA
sums its per-condition transforms) — and a map T with T(X) ≈ Y is fitted: least squares,
orthogonal Procrustes, CCA, or optimal transport (no pairing needed). The merged model is a
plain blueprint:

    A's nodes before its layer stack → A's layers 0..i → [stitch_norm] → stitch → B's layers j+1.. → B's head

``stitch_norm`` (with ``at: normed``) is a copy of A's next norm — the first norm of A's
layer i+1, or A's final norm after its last layer — so the map reads the normalised state A
itself would read next. B's head, when tied to B's token embedding, is tied to A's embedding
in the stitched model (``tie``), which computes the same function only where the two
embeddings are equal; :mod:`ssmgraph.merge.stitch_search` scores pairs and fine-tunes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ssmgraph.blueprint import Blueprint
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.graph.model import CompiledModel
from ssmgraph.merge import maps
from ssmgraph.merge.compare import tapped, tapped_states
from ssmgraph.merge.compose import layer_stacks, rename_node
from ssmgraph.merge.consistency import depth_pairs
from ssmgraph.merge.context import MergeError
from ssmgraph.merge.models import LoadedModel, blueprint_of
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


def _is_norm(node: Any) -> bool:
    return isinstance(node, dict) and str(node.get("block", "")).startswith("norm.")


def next_norm(model: LoadedModel, i: int) -> tuple[str, dict[str, Any]]:
    """The module path and node of the first norm ``model`` applies after its layer i: in its
    layer i+1, or after its layer stack (the final norm)."""
    stack, bp = layer_stack(model), blueprint_of(model.model)
    if i + 1 < stack.layers:
        body = bp["nodes"][stack.name]["body"]["nodes"]
        found = next((n for n, node in body.items() if _is_norm(node)), None)
        if found is not None:
            return f"{stack.name}.{i + 1}.{found}", body[found]
    else:
        found = next((n for n in stack.after if _is_norm(bp["nodes"][n])), None)
        if found is not None:
            return found, bp["nodes"][found]
    raise MergeError(f"at: normed reads the state after {model.name!r}'s next norm, but it applies none after its layer {i}")


def embedding_pair(a: LoadedModel, b: LoadedModel) -> tuple[str, str, str] | None:
    """``(B's head node, its tied parameter, A's embedding node)`` where B's head is tied to B's
    token embedding and A reads a token embedding of the same vocabulary and width; else None."""
    sa, sb = layer_stack(a), layer_stack(b)
    bpa, bpb = blueprint_of(a.model), blueprint_of(b.model)
    for head in sb.after:
        for key, ref in bpb["nodes"][head].get("tie", {}).items():
            owner = bpb["nodes"].get(ref.split(".")[0], {})
            if ref.split(".")[0] not in sb.before or owner.get("block") != "embed.token":
                continue
            for name in sa.before:
                node = bpa["nodes"][name]
                if node.get("block") == "embed.token" and node.get("args") == owner.get("args"):
                    return head, key, name
    return None


def resolve_tie(a: LoadedModel, b: LoadedModel, mode: str) -> tuple[bool, dict[str, Any]]:
    """Whether the stitched head is tied to A's embedding (``mode``: auto, keep or untie), and why.

    ``auto`` keeps the tie where A's and B's embeddings are equal (to 1e-6, relative: one
    shared embedding, e.g. models trained by ``mutual``), the only case where tying changes
    nothing; ``keep`` ties whenever the shapes allow, so B's head reads A's embedding."""
    pair = embedding_pair(a, b)
    if pair is None:
        if mode == "keep":
            raise MergeError(
                f"tie: keep needs {b.name!r}'s head tied to its token embedding and {a.name!r} reading a token embedding "
                "of the same vocabulary and width; use tie: auto or untie"
            )
        return False, {"kept": False, "why": "B's head is not tied to a token embedding of A's vocabulary and width"}
    head, key, embed = pair
    e_a = a.model.state_dict()[f"{embed}.weight"].double()
    e_b = b.model.state_dict()[b.model.tied.get(f"{head}.{key}", f"{head}.{key}")].double()
    difference = float((e_a - e_b).norm() / e_b.norm().clamp_min(1e-300))
    kept = mode == "keep" or (mode == "auto" and difference <= 1e-6)
    why = {
        "keep": "asked for (tie: keep)",
        "untie": "asked for (tie: untie)",
        "auto": "the embeddings are equal" if kept else "the embeddings differ, so B's head keeps a copy of B's embedding",
    }[mode]
    return kept, {
        "kept": kept,
        "why": why,
        "embedding_difference": difference,
        "head": f"b_{head}.{key}",
        "embedding": f"a_{embed}.weight",
    }


def stitched_blueprint(
    a: LoadedModel, b: LoadedModel, i: int, j: int, *, at: str = "residual", tie: bool = False
) -> dict[str, Any]:
    """A's nodes up to its layer i, [``stitch_norm``,] ``stitch``, B's layers after j and B's head (plain dict)."""
    sa, sb = layer_stack(a), layer_stack(b)
    bpa, bpb = blueprint_of(a.model), blueprint_of(b.model)
    if bpa["inputs"] != bpb["inputs"]:
        raise MergeError(f"models {a.name!r} and {b.name!r} read different inputs; a stitched model feeds B's layers from A's")
    d_b = b.model.nodes[f"{sb.name}.0.{sb.out_node}"].out_type.dim
    rename_a = {n: f"a_{n}" for n in sa.before + [sa.name]}
    nodes: dict[str, Any] = {rename_a[n]: rename_node(bpa["nodes"][n], rename_a) for n in sa.before}
    nodes["a_" + sa.name] = {**rename_node(bpa["nodes"][sa.name], rename_a), "repeat": i + 1}
    source = "a_" + sa.name
    if at == "normed":
        norm = next_norm(a, i)[1]
        nodes["stitch_norm"] = {"block": norm["block"], "in": source, **({"args": norm["args"]} if "args" in norm else {})}
        source = "stitch_norm"
    nodes["stitch"] = {"block": "stitch.linear", "in": source, "args": {"dim": d_b}}
    rename_b = {n: f"b_{n}" for n in sb.after}
    rest = sb.layers - j - 1
    rename_b[sb.name] = f"b_{sb.name}" if rest > 0 else "stitch"
    if rest > 0:
        nodes[f"b_{sb.name}"] = {**rename_node(bpb["nodes"][sb.name], {}), "in": "stitch", "repeat": rest}
    pair = embedding_pair(a, b) if tie else None
    for n in sb.after:
        node = rename_node(bpb["nodes"][n], rename_b)
        ties = {k: r for k, r in node.pop("tie", {}).items() if r.split(".")[0] in rename_b.values()}
        if pair is not None and pair[0] == n:
            ties[pair[1]] = f"a_{pair[2]}.weight"
        nodes[rename_b[n]] = {**node, "tie": ties} if ties else node
    return {
        "ssmgraph": 1,
        "name": f"stitch_{a.name}{i}_{b.name}{j}",
        "doc": f"{a.name!r} up to its layer {i}, a linear stitch, then {b.name!r} from its layer {j + 1} (ssmgraph merge, method stitch).",
        "inputs": bpa["inputs"],
        "nodes": nodes,
        "outputs": {name: rename_b.get(t.split(".")[0], t) for name, t in bpb["outputs"].items()},
    }


def stitched_state(
    a: LoadedModel, b: LoadedModel, i: int, j: int, weight: Tensor, bias: Tensor, *, at: str = "residual", tie: bool = False
) -> dict[str, Tensor]:
    """The stitched model's weights: A's up to layer i (and its next norm, ``at: normed``), the
    map, B's after layer j (B's tied aliases left out where the stitched head is tied)."""
    sa, sb = layer_stack(a), layer_stack(b)
    state: dict[str, Tensor] = {"stitch.weight": weight, "stitch.bias": bias}
    a_state = a.model.state_dict()
    if at == "normed":
        path = next_norm(a, i)[0]
        state |= {f"stitch_norm.{k[len(path) + 1 :]}": v for k, v in a_state.items() if k.startswith(path + ".")}
    for key, value in a_state.items():
        head, _, rest = key.partition(".")
        if head in sa.before or (head == sa.name and int(rest.split(".")[0]) <= i):
            state[f"a_{key}"] = value
    for key, value in b.model.state_dict().items():
        head, _, rest = key.partition(".")
        if tie and key in b.model.tied:
            continue
        if head in sb.after:
            state[f"b_{key}"] = value
        elif head == sb.name:
            layer, _, tail = rest.partition(".")
            if int(layer) > j:
                state[f"b_{sb.name}.{int(layer) - j - 1}.{tail}"] = value
    return state


def build_stitched(
    a: LoadedModel, b: LoadedModel, i: int, j: int, weight: Tensor, bias: Tensor, *, at: str = "residual", tie: bool = False
) -> CompiledModel:
    blueprint = stitched_blueprint(a, b, i, j, at=at, tie=tie)
    model = compile_blueprint(Blueprint.from_dict(blueprint, source="<stitched blueprint>"))
    state = stitched_state(a, b, i, j, weight.float(), bias.float(), at=at, tie=tie)
    missing = set(model.state_dict()) - set(state) - set(model.tied)
    if missing:
        raise MergeError(f"stitching {a.name!r} layer {i} into {b.name!r} layer {j}: no weights for {sorted(missing)[:3]}")
    model.load_state_dict(state, strict=False)
    return model.eval()


# ---- probing --------------------------------------------------------------------------------------
def probe(model: LoadedModel, task: Task, *batch_lists: list[Any]) -> list[tuple[list[Tensor], Tensor]]:
    """For each list of batches: the hidden states after each layer (tokens × width, float64)
    and each token's label (the sequence's class, or the token's target; -1 where none)."""
    joint = tapped(model.model, model.name)
    return [
        (tapped_states(joint, model.name, batches), torch.cat([token_labels(task, batch) for batch in batches]))
        for batches in batch_lists
    ]


def token_labels(task: Task, batch: Any) -> Tensor:
    """Each token's label: its sequence's class, or its own target (-1 where none)."""
    length = batch.inputs.shape[1]
    if task.kind == "classify":
        return batch.targets[:, None].expand(-1, length).reshape(-1)
    if task.kind == "lm":
        return torch.where(batch.targets == IGNORE, -1, batch.targets).reshape(-1)
    return torch.full((batch.inputs.shape[0] * length,), -1)


@torch.no_grad()
def read_at(model: LoadedModel, states: Tensor, i: int, at: str) -> Tensor:
    """What the map reads of A's states after layer i: the states, or their image under A's next norm."""
    if at != "normed":
        return states
    norm = copy.deepcopy(model.model.get_submodule(next_norm(model, i)[0])).double()
    return norm(states)


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


def farthest_layer(i: int, layers: int) -> int:
    """The layer of a stack of ``layers`` farthest from layer i (the first on a tie): the
    wrong-depth control stitches from there."""
    return 0 if i >= (layers - 1) / 2 else layers - 1
