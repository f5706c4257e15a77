"""Superposition (Ben Chaliah & Dellagi 2025, arXiv 2501.00530), made causal and measured on held-out data.

Two models of one depth, of any blueprints and widths (say a byte-level LM trained on
English, A, and one on French, B) are put into one model. At every layer both models' blocks
read the same incoming state (a narrower model its first coordinates, see :mod:`.model`), their outputs are blended, and an autoencoder maps the blend back to a
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

from typing import Any

from ssmgraph.merge.compatibility import Compatibility, classify
from ssmgraph.merge.context import MergeContext, MergeError, MergeResult
from ssmgraph.merge.superpose.analysis import (
    best_of,
    bits_per_byte_on_both,
    draw_plots,
    interpolation_candidates,
    layer_analysis,
    task_arithmetic_candidates,
)
from ssmgraph.merge.superpose.model import build_superposed
from ssmgraph.merge.superpose.training import language_tasks, train_superposed
from ssmgraph.serialization import load as load_model


def run_superpose(context: MergeContext) -> MergeResult:
    """Build, train and measure the superposed model of the recipe's two models."""
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
    merged = bits_per_byte_on_both(model, tasks, bs, limit)
    figures["sequences"] = {"a": merged[2], "b": merged[3]}
    for name, m in ((f"specialist {a.name}", a.model), (f"specialist {b.name}", b.model), ("superposed", model)):
        score = merged if m is model else bits_per_byte_on_both(m, tasks, bs, limit)
        figures[name] = {"bpb_a": score[0], "bpb_b": score[1]}
        rows.append([name, score[0], score[1]])
    weight_baselines = classify([a, b])[0].within(Compatibility.SAME_SHAPE)  # what tensor-wise averages need
    if weight_baselines:
        t_best, score, grid = best_of(interpolation_candidates(a, b), tasks, bs, limit)
        figures["linear interpolation"] = {"t": float(t_best), "bpb_a": score[0], "bpb_b": score[1], "grid": grid}
        rows.append([f"linear interpolation (best t = {t_best})", score[0], score[1]])
    if context.params["base"] and weight_baselines:
        base = load_model(context.path(context.params["base"]))
        s_best, score, grid = best_of(task_arithmetic_candidates(a, b, base), tasks, bs, limit)
        figures["task arithmetic"] = {"scale": float(s_best), "bpb_a": score[0], "bpb_b": score[1], "grid": grid}
        rows.append([f"task arithmetic (best λ = {s_best})", score[0], score[1]])
    spec_a, spec_b = figures[f"specialist {a.name}"]["bpb_a"], figures[f"specialist {b.name}"]["bpb_b"]
    ratios = {"a": 2 ** (merged[0] - spec_a), "b": 2 ** (merged[1] - spec_b)}
    figures["perplexity_ratio"] = ratios
    figures.update(layer_analysis(context, model, a, b, tasks))
    result = MergeResult(model, metrics=figures)
    n_a, n_b = merged[2], merged[3]
    result.tables.append(
        (
            f"Held-out bits per byte ({n_a} sequences of A's data, {n_b} of B's)",
            ["model", f"on {a.name}'s data", f"on {b.name}'s data"],
            rows,
        )
    )
    result.tables.append(
        ("Superposed perplexity / specialist perplexity", ["language", "ratio"], [[a.name, ratios["a"]], [b.name, ratios["b"]]])
    )
    result.tables.append(
        (
            "Per layer",
            ["layer", "α (mean)", "reconstruction NMSE", "polysemantic share (0.05 rule)", "mean selectivity"],
            figures.pop("_layer_rows"),
        )
    )
    result.plots += draw_plots(context, figures, log)
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
