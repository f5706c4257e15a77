"""Superposition (seed 002, arXiv 2501.00530), made causal and measured on held-out data.

Two models of one layer structure (say a byte-level LM trained on English, A, and one on
French, B) are put into one model. At every layer both models' blocks read the same
incoming state, their outputs are blended, and an autoencoder maps the blend back to a
hidden state::

    ĥ_0 = blend_0(emb_A(x), emb_B(x)),   h_l = (1 − α_l)·f_A,l(ĥ_{l−1}) + α_l·f_B,l(ĥ_{l−1}),
    ĥ_l = AE_l(h_l),                      logits = blend_L+1(head_A(ĥ_L), head_B(ĥ_L))

α comes from a B-spline over normalised depth — one scalar per layer ("1D") or one per
feature ("2D"). The source weights stay frozen; the autoencoders and the spline's control
points are trained on both languages with the LM loss plus a reconstruction loss pulling
ĥ_l towards the hidden state of the specialist of the sequence's language. Unlike the
published notebooks, the autoencoders never see later tokens (pointwise or left-padded
convolutions), and every figure is measured on held-out text. After training each layer's
α is stored in its ``stitch.blend`` node: the merged model is a plain blueprint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ssmgraph.graph.model import CompiledModel
from ssmgraph.merge.context import LoadedModel, MergeContext, MergeError, MergeResult, blueprint_of, classify
from ssmgraph.registry.specs import MergeMethodSpec, Param
from ssmgraph.train.tasks.base import Task

PARAMS = (
    Param("options_a", dict, {}, "task options for model A's data (added to data.options), e.g. {corpus: en}"),
    Param("options_b", dict, {}, "task options for model B's data, e.g. {corpus: fr}"),
    Param("alpha", str, "scalar", "one α per layer ('scalar', 1D) or one per feature ('vector', 2D)", choices=("scalar", "vector")),
    Param("control_points", int, 0, "B-spline control points over depth (0: ceil(layers / 2) + 2)", min=0),
    Param("autoencoder", str, "linear", "autoencoder on each blended state: pointwise 'linear' or a left-padded 'causal_conv'", choices=("linear", "causal_conv")),
    Param("bottleneck", float, 1.0, "autoencoder bottleneck width as a fraction of the model width", min=0.05, max=4.0),
    Param("kernel", int, 3, "time-kernel of the causal_conv autoencoder (left padding only)", min=1),
    Param("steps", int, 300, "training steps of the autoencoders and α", min=1),
    Param("lr", float, 3e-3, "Adam learning rate", min=0.0),
    Param("recon_weight", float, 1.0, "weight of the reconstruction loss (against the specialist's state)", min=0.0),
    Param("base", str, "", "the models' common initialisation (a saved model), for the task-arithmetic baseline ('' skips it)"),
)


class AlphaAt(nn.Module):
    """A parametrization: a blend's α is the shared curve evaluated at the blend's depth."""

    def __init__(self, curve: nn.Module, depth: float, reduce: bool = False):
        super().__init__()
        self.curve, self.depth, self.reduce = curve, depth, reduce

    def forward(self, original: Tensor) -> Tensor:
        value = self.curve(torch.tensor([self.depth]))[0]
        value = value.mean() if self.reduce else value
        return value.to(original.dtype).expand_as(original).clone() if value.dim() < original.dim() else value.to(original.dtype)


def _single_stack(model: LoadedModel) -> Any:
    from ssmgraph.merge.stitch import layer_stack

    return layer_stack(model)


def superposed_blueprint(a: LoadedModel, b: LoadedModel, params: Mapping[str, Any]) -> dict[str, Any]:
    """Both models' nodes side by side, a blend + autoencoder after every layer (plain dict)."""
    from ssmgraph.merge.compose import rename_node, rename_ref

    sa, sb = _single_stack(a), _single_stack(b)
    bpa, bpb = blueprint_of(a.model), blueprint_of(b.model)
    if sa.layers != sb.layers:
        raise MergeError(f"superposition pairs layers one to one; {a.name!r} has {sa.layers} and {b.name!r} has {sb.layers} (try stitch)")
    if bpa["inputs"] != bpb["inputs"] or len(bpa["outputs"]) != 1 or len(bpb["outputs"]) != 1:
        raise MergeError("superposition needs two models with the same inputs and one output each")
    width = a.model.nodes[f"{sa.name}.0.{sa.out_node}"].out_type.dim
    if b.model.nodes[f"{sb.name}.0.{sb.out_node}"].out_type.dim != width:
        raise MergeError(f"superposition blends hidden states of one width; {a.name!r} and {b.name!r} differ (try stitch)")
    blend_args = {"per_feature": params["alpha"] == "vector"}
    ae_args = {"kind": params["autoencoder"], "bottleneck": params["bottleneck"], "kernel": params["kernel"]}
    nodes: dict[str, Any] = {}
    stack_inputs = []
    for prefix, bp, stack in (("a", bpa, sa), ("b", bpb, sb)):
        rename = {n: f"{prefix}_{n}" for n in stack.before + stack.after}
        rename[stack.name] = stack.name
        for n in stack.before:
            nodes[rename[n]] = rename_node(bp["nodes"][n], rename)
        stack_inputs.append(rename_ref(bp["nodes"][stack.name]["in"], rename))
    nodes["embed_blend"] = {"block": "stitch.blend", "in": {"a": stack_inputs[0], "b": stack_inputs[1]}, "args": blend_args}
    stack_node = bpa["nodes"][sa.name]
    body_nodes: dict[str, Any] = {}
    outs = []
    for prefix, bp, stack in (("a", bpa, sa), ("b", bpb, sb)):
        body = bp["nodes"][stack.name]["body"]
        rename = {n: f"{prefix}_{n}" for n in body["nodes"]}
        body_nodes.update({rename[n]: rename_node(node, rename) for n, node in body["nodes"].items()})
        outs.append(rename[stack.out_node])
    if bpa["nodes"][sa.name]["body"]["inputs"] != bpb["nodes"][sb.name]["body"]["inputs"]:
        raise MergeError("the two layer stacks name their carried input differently; rename one blueprint's carry")
    body_nodes["blend"] = {"block": "stitch.blend", "in": {"a": outs[0], "b": outs[1]}, "args": blend_args}
    body_nodes["ae"] = {"block": "stitch.autoencoder", "in": "blend", "args": ae_args}
    carry = next(iter(stack_node["body"]["outputs"]))
    nodes[sa.name] = {
        "in": "embed_blend",
        "repeat": sa.layers,
        "carry": stack_node.get("carry", carry),
        "body": {"inputs": stack_node["body"]["inputs"], "nodes": body_nodes, "outputs": {carry: "ae"}},
    }
    heads = []
    for prefix, bp, stack in (("a", bpa, sa), ("b", bpb, sb)):
        rename = {n: f"{prefix}_{n}" for n in stack.before + stack.after}
        rename[stack.name] = sa.name
        for n in stack.after:
            nodes[rename[n]] = rename_node(bp["nodes"][n], rename)
        heads.append(rename_ref(next(iter(bp["outputs"].values())), rename))
    nodes["logits_blend"] = {"block": "stitch.blend", "in": {"a": heads[0], "b": heads[1]}}
    return {
        "ssmgraph": 1,
        "name": f"superpose_{a.name}_{b.name}",
        "doc": f"{a.name!r} and {b.name!r} in superposition: both models' layers read one state, blended by α and an autoencoder (ssmgraph merge, method superpose).",
        "inputs": bpa["inputs"],
        "nodes": nodes,
        "outputs": {next(iter(bpa["outputs"])): "logits_blend"},
        "taps": {"hidden": {"at": f"{sa.name}.*.ae"}},
    }


def superposed_state(a: LoadedModel, b: LoadedModel) -> dict[str, Tensor]:
    """Both models' weights under the superposed blueprint's names: the layers of each stack
    inside A's stack node (named as A's, see :func:`superposed_blueprint`), the rest prefixed."""
    out = {}
    stack_name = _single_stack(a).name
    for prefix, model in (("a", a), ("b", b)):
        stack = _single_stack(model)
        for key, value in model.model.state_dict().items():
            head, _, rest = key.partition(".")
            if head == stack.name:
                layer, _, tail = rest.partition(".")
                out[f"{stack_name}.{layer}.{prefix}_{tail}"] = value
            else:
                out[f"{prefix}_{key}"] = value
    return out


def _blends(model: CompiledModel, layers: int) -> list[tuple[nn.Module, float]]:
    """Each blend module and its normalised depth: the embedding at 0, layer l at (l+1)/(L+1), the head at 1."""
    modules = dict(model.named_modules())
    found = [(modules["embed_blend"], 0.0)]
    found += [(modules[name], (i + 1) / (layers + 1)) for i, name in enumerate(n for n in modules if n.endswith(".blend"))]
    found.append((modules["logits_blend"], 1.0))
    return found


def build_superposed(a: LoadedModel, b: LoadedModel, params: Mapping[str, Any]) -> CompiledModel:
    from ssmgraph.blueprint import load_blueprint
    from ssmgraph.blueprint.yamlsafe import dump_yaml
    from ssmgraph.graph.compile import compile_blueprint

    model = compile_blueprint(load_blueprint("superposed.yaml", text=dump_yaml(superposed_blueprint(a, b, params))))
    state = superposed_state(a, b)
    result = model.load_state_dict(state, strict=False)
    sources_missing = [k for k in result.missing_keys if ".blend." not in k and ".ae." not in k and not k.startswith(("embed_blend", "logits_blend")) and k not in model.tied]
    if sources_missing or result.unexpected_keys:
        raise MergeError(f"superposed weights do not fit: missing {sources_missing[:3]}, unexpected {result.unexpected_keys[:3]}")
    return model


# ---- data and losses ----------------------------------------------------------------------------
def language_tasks(context: MergeContext) -> tuple[Task, Task]:
    from ssmgraph.train.loop import make_task

    data = context.recipe.data
    return (make_task(data.task, {**data.options, **context.params["options_a"]}), make_task(data.task, {**data.options, **context.params["options_b"]}))


@torch.no_grad()
def specialist_states(model: LoadedModel, inputs: Tensor) -> list[Tensor]:
    from ssmgraph.merge.compare import tapped
    from ssmgraph.merge.compose import model_taps

    _, taps = tapped(model.model, model.name)(inputs, taps=[f"{model.name}.h"])
    return model_taps(taps, model.name, "h")


def _lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    from ssmgraph.train.tasks.base import IGNORE

    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)


def _recon(hidden: list[Tensor], targets: list[Tensor]) -> Tensor:
    """Mean over layers of MSE / the target's variance (a normalised error: 1 = predicting the mean)."""
    return torch.stack([F.mse_loss(h, t) / t.var().clamp_min(1e-8) for h, t in zip(hidden, targets)]).mean()


def _hidden(taps: Mapping[str, Tensor]) -> list[Tensor]:
    return [v for _, v in sorted(taps.items(), key=lambda kv: int(kv[0].rsplit(".", 1)[1]))]


def train_superposed(context: MergeContext, model: CompiledModel, a: LoadedModel, b: LoadedModel, tasks: tuple[Task, Task]) -> list[dict[str, float]]:
    from ssmgraph.merge.bspline import BSplineCurve

    p, layers = context.params, _single_stack(a).layers
    width = model.nodes["embed_blend"].out_type.dim
    n_ctrl = p["control_points"] or math.ceil(layers / 2) + 2
    curve = BSplineCurve(n_ctrl, width=width if p["alpha"] == "vector" else None)
    for param in model.parameters():
        param.requires_grad_(False)
    blends = _blends(model, layers)
    for module, depth in blends:
        parametrize.register_parametrization(module, "alpha", AlphaAt(curve, depth, reduce=module is blends[-1][0]), unsafe=True)
    trainable = [*curve.parameters(), *(q for n, q in model.named_parameters() if ".ae." in n)]
    for q in trainable:
        q.requires_grad_(True)
    optimizer = torch.optim.Adam(trainable, lr=p["lr"])
    generator = context.generator(17)
    batch_size = context.recipe.data.batch_size
    log = []
    model.train()
    for step in range(p["steps"]):
        lr = p["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / p["steps"])))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch_a, batch_b = (task.sample(batch_size, generator, "train") for task in tasks)
        targets = [torch.cat(pair) for pair in zip(specialist_states(a, batch_a.inputs), specialist_states(b, batch_b.inputs))]
        inputs, labels = torch.cat([batch_a.inputs, batch_b.inputs]), torch.cat([batch_a.targets, batch_b.targets])
        logits, taps = model(inputs, taps=["hidden"])
        lm, recon = _lm_loss(logits, labels), _recon(_hidden(taps), targets)
        loss = lm + p["recon_weight"] * recon
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 10 == 0 or step + 1 == p["steps"]:
            log.append({"step": step + 1, "lm": float(lm.detach()), "recon": float(recon.detach())})
    model.eval()
    for module, _ in blends:
        parametrize.remove_parametrizations(module, "alpha", leave_parametrized=True)
    for q in model.parameters():
        q.requires_grad_(True)
    return log


# ---- evaluation ---------------------------------------------------------------------------------
@torch.no_grad()
def bits_per_byte(model: nn.Module, task: Task, batch_size: int, limit: int) -> tuple[float, int]:
    """Held-out bits per token (per byte for byte-level text) over at most ``limit`` windows."""
    from ssmgraph.train.tasks.base import IGNORE

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
    import copy

    model = copy.deepcopy(a.model)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    model.load_state_dict({k: sa[k] + t * (sb[k] - sa[k]) if sa[k].is_floating_point() else sa[k] for k in sa})
    return model


def _task_arithmetic(a: LoadedModel, b: LoadedModel, base: CompiledModel, scale: float) -> CompiledModel:
    import copy

    model = copy.deepcopy(base)
    s0, sa, sb = base.state_dict(), a.model.state_dict(), b.model.state_dict()
    model.load_state_dict({k: s0[k] + scale * ((sa[k] - s0[k]) + (sb[k] - s0[k])) if s0[k].is_floating_point() else s0[k] for k in s0})
    return model


def _score(model: nn.Module, tasks: tuple[Task, Task], batch_size: int, limit: int) -> tuple[float, float, int, int]:
    bpb_a, n_a = bits_per_byte(model, tasks[0], batch_size, limit)
    bpb_b, n_b = bits_per_byte(model, tasks[1], batch_size, limit)
    return bpb_a, bpb_b, n_a, n_b


def _best_of(candidates: Mapping[str, nn.Module], tasks: tuple[Task, Task], batch_size: int, limit: int) -> tuple[str, tuple[float, float, int, int], dict[str, list[float]]]:
    """The candidate with the lowest mean bits per byte over both languages (a grid search)."""
    scores = {name: _score(m, tasks, batch_size, limit) for name, m in candidates.items()}
    best = min(scores, key=lambda k: scores[k][0] + scores[k][1])
    return best, scores[best], {k: [v[0], v[1]] for k, v in scores.items()}


def run_superpose(context: MergeContext) -> MergeResult:
    from ssmgraph import load

    a, b = context.models
    tasks = language_tasks(context)
    if any(t.kind != "lm" for t in tasks):
        raise MergeError("superposition merges language models: `data.task` must be a language-model task such as bytes")
    model = build_superposed(a, b, context.params)
    log = train_superposed(context, model, a, b, tasks)
    data = context.recipe.data
    limit, bs = data.eval_size, data.batch_size
    figures: dict[str, Any] = {"log": log}
    rows = []
    merged = _score(model, tasks, bs, limit)
    figures["sequences"] = {"a": merged[2], "b": merged[3]}
    for name, m in ((f"specialist {a.name}", a.model), (f"specialist {b.name}", b.model), ("superposed", model)):
        score = merged if m is model else _score(m, tasks, bs, limit)
        figures[name] = {"bpb_a": score[0], "bpb_b": score[1]}
        rows.append([name, score[0], score[1]])
    weight_baselines = classify([a, b])[0] in ("identical", "same_shape")  # what tensor-wise averages need
    if weight_baselines:
        t_best, score, grid = _best_of({f"{t:.1f}": _interpolated(a, b, t) for t in [i / 10 for i in range(11)]}, tasks, bs, limit)
        figures["linear interpolation"] = {"t": float(t_best), "bpb_a": score[0], "bpb_b": score[1], "grid": grid}
        rows.append([f"linear interpolation (best t = {t_best})", score[0], score[1]])
    if context.params["base"] and weight_baselines:
        base = load(context.path(context.params["base"]))
        s_best, score, grid = _best_of({f"{s:.2f}": _task_arithmetic(a, b, base, s) for s in (0.25, 0.5, 0.75, 1.0)}, tasks, bs, limit)
        figures["task arithmetic"] = {"scale": float(s_best), "bpb_a": score[0], "bpb_b": score[1], "grid": grid}
        rows.append([f"task arithmetic (best λ = {s_best})", score[0], score[1]])
    spec_a, spec_b = figures[f"specialist {a.name}"]["bpb_a"], figures[f"specialist {b.name}"]["bpb_b"]
    ratios = {"a": 2 ** (merged[0] - spec_a), "b": 2 ** (merged[1] - spec_b)}
    figures["perplexity_ratio"] = ratios
    figures.update(_analysis(context, model, a, b, tasks))
    result = MergeResult(model, metrics=figures)
    n_a, n_b = merged[2], merged[3]
    result.tables.append((f"Held-out bits per byte ({n_a} sequences of A's data, {n_b} of B's)", ["model", f"on {a.name}'s data", f"on {b.name}'s data"], rows))
    result.tables.append(("Superposed perplexity / specialist perplexity", ["language", "ratio"], [[a.name, ratios["a"]], [b.name, ratios["b"]]]))
    result.tables.append(("Per layer", ["layer", "α (mean)", "reconstruction NMSE", "polysemantic share (0.05 rule)", "mean selectivity"], figures.pop("_layer_rows")))
    result.plots += _plots(context, figures, log)
    overhead = sum(q.numel() for n, q in model.named_parameters() if ".ae." in n or "blend" in n)
    sources = sum(q.numel() for q in a.model.parameters()) + sum(q.numel() for q in b.model.parameters())
    figures["parameters"] = {"added": overhead, "sources": sources, "overhead": overhead / sources}
    result.notes += [
        f"Parameters added (autoencoders and α): {overhead} ({100 * overhead / sources:.1f}% of both sources); compute per token: both models' layers run, about 2× one model.",
        "Causal: every block is causal and the autoencoders are pointwise or left-padded; no position reads a later token (tested).",
        "Linear interpolation and task arithmetic are grid-searched for the lowest mean bits per byte over both languages, on the same held-out data."
        if weight_baselines
        else "No linear-interpolation or task-arithmetic baseline: the two models' weights differ in names, shapes or ties, so they cannot be averaged.",
    ]
    return result


@torch.no_grad()
def _analysis(context: MergeContext, model: CompiledModel, a: LoadedModel, b: LoadedModel, tasks: tuple[Task, Task]) -> dict[str, Any]:
    """Per-layer α, reconstruction error, polysemantic neurons; hidden states for the plots."""
    batch_size = context.recipe.data.batch_size
    batches = [next(iter(task.eval_batches(batch_size))) for task in tasks]
    hidden, targets = [], []
    for batch, specialist in zip(batches, (a, b)):
        _, taps = model(batch.inputs, taps=["hidden"])
        hidden.append(_hidden(taps))
        targets.append(specialist_states(specialist, batch.inputs))
    alphas = [float(m.alpha.mean()) for m, _ in _blends(model, len(hidden[0]))]
    rows, recon, poly = [], [], []
    for layer in range(len(hidden[0])):
        nmse = float(_recon([torch.cat([hidden[0][layer], hidden[1][layer]])], [torch.cat([targets[0][layer], targets[1][layer]])]))
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


def _plots(context: MergeContext, figures: dict[str, Any], log: list[dict[str, float]]) -> list[str]:
    from ssmgraph.merge.plots import curves, pyplot

    states = figures.pop("_states")
    out = context.out_dir
    steps = [r["step"] for r in log]
    curves({"LM loss": (steps, [r["lm"] for r in log]), "reconstruction (NMSE)": (steps, [r["recon"] for r in log])}, "step", "loss", "superposition training", out / "training.png", log_y=True)
    depth = list(range(len(figures["alpha"])))
    curves({"α": (depth, figures["alpha"])}, "depth (0: embedding, last: head)", "α (0: A, 1: B)", "blend along depth", out / "alpha.png")
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
        from sklearn.manifold import TSNE

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


SUPERPOSE = MergeMethodSpec(
    name="superpose",
    doc="Two language models in one: both models' layers blended by a B-spline α over depth, autoencoders on the blends (causal).",
    params=PARAMS,
    run=run_superpose,
    needs="heterogeneous",
    min_models=2,
    max_models=2,
    data=True,
    reference="seed 002; Ben Chaliah & Dellagi 2025, Superposition in Transformers (arXiv 2501.00530)",
)
