"""The ``stitch`` report: held-out figures of the sources, of every pair, of the fine-tuned
stitch and of its controls, as tables and a heatmap — loss and bits (per token, and per byte
where the task knows its bytes per token) for a language model, accuracy for a classifier."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ssmgraph.merge.context import MergeContext, MergeResult
from ssmgraph.merge.plots import heatmap

_HEADERS = {"loss": "held-out loss", "bits": "bits/token", "bits_per_byte": "bits/byte", "accuracy": "accuracy"}


def rank_key(kind: str, figures: Mapping[str, float]) -> float:
    """Smaller is better: held-out accuracy ranks a classifier's stitches, held-out loss any other's."""
    return -figures["accuracy"] if kind == "classify" else figures["loss"]


def columns(kind: str, figures: Mapping[str, float]) -> list[str]:
    """The evaluation figures a report shows for a task of ``kind``, in order."""
    if kind == "classify":
        return ["accuracy", "loss"]
    if kind == "lm":
        return ["loss", "bits", *(["bits_per_byte"] if "bits_per_byte" in figures else []), "accuracy"]
    return ["loss"]


def headline(kind: str, figures: Mapping[str, float]) -> str:
    """The one figure a heatmap shows: accuracy, bits per byte (or per token), or loss."""
    if kind == "classify":
        return "accuracy"
    return ("bits_per_byte" if "bits_per_byte" in figures else "bits") if kind == "lm" else "loss"


def report(context: MergeContext, result: MergeResult, figures: dict[str, Any], layers: tuple[int, int], heat: bool) -> None:
    """Add the stitch's tables, plot and notes to ``result``."""
    p, task = context.params, context.task
    assert task is not None
    a, b = context.base.name, context.others[0].name
    first = next(iter(figures["sources"].values()))
    cols = columns(task.kind, first)
    head = [_HEADERS[c] for c in cols]

    def row(label: str, values: Mapping[str, float]) -> list[Any]:
        return [label, *(values[c] for c in cols)]

    result.tables.append(("Sources (held-out)", ["model", *head], [row(k, v) for k, v in figures["sources"].items()]))
    pairs = []
    for key, values in figures["pairs"].items():
        i, j = (int(v) for v in key.split(","))
        pairs.append([*row(f"{a}.{i} → {b}.{j + 1}", values), values["r2"], values["cka_before"], values["cka_after"]])
    title = f"Stitched, closed form ({p['estimator']}, {p['condition']}, at {p['at']})"
    result.tables.append((title, ["stitch", *head, "held-out R²", "CKA before", "CKA after"], pairs))
    tuning = f"{p['finetune_steps']} steps, {p['finetune']}, learn {p['learn']}"
    best = figures["best"]
    rows = []
    for entry in figures["candidates"]:
        pair = f"{a}.{entry['layer_a']} → {b}.{entry['layer_b'] + 1}"
        rows.append(row(f"{pair}, closed form", entry["closed_form"]))
        if "finetuned" in entry:
            rows.append(row(f"{pair}, stitch fine-tuned ({tuning})", entry["finetuned"]))
    for name, control in figures["controls"].items():
        rows.append(row(f"control: {name}", control["closed_form"]))
        if "finetuned" in control:
            rows.append(row(f"control: {name}, fine-tuned", control["finetuned"]))
    chosen = f"{a}.{best['layer_a']} → {b}.{best['layer_b'] + 1}"
    result.tables.append((f"Best pair {chosen} (by held-out {figures['selected_by']}) and controls", ["model", *head], rows))
    params = figures["parameters"]
    result.tables.append(
        ("Parameters trained", ["trained", "stitched model", "ratio"], [[params["trained"], params["model"], params["ratio"]]])
    )
    if heat:
        result.plots.append(_heatmap(context, figures["pairs"], layers, (a, b), headline(task.kind, first)))
    tie = figures["tie"]
    if "embedding_difference" in tie:
        state = "tied to A's embedding" if tie["kept"] else "untied (a copy of B's embedding)"
        result.notes.append(
            f"B's head is {state}: {tie['why']}; ‖E_A − E_B‖ / ‖E_B‖ = {tie['embedding_difference']:.3g} (parameter `tie`)."
        )
    result.notes.append(
        "CKA is reported as a diagnostic only: it does not change under orthogonal maps, so it cannot reward a Procrustes stitch."
    )


def _heatmap(
    context: MergeContext, scored: Mapping[str, Any], layers: tuple[int, int], names: tuple[str, str], metric: str
) -> str:
    values = torch.full(layers, float("nan"))
    for key, figure in scored.items():
        i, j = (int(v) for v in key.split(","))
        values[i, j] = figure[metric]
    heatmap(
        values,
        [f"{names[0]}.{i}" for i in range(layers[0])],
        [f"{names[1]}.{j}" for j in range(layers[1])],
        f"stitched held-out {_HEADERS[metric]}\n(row: A's layer, column: B's layer)",
        context.out_dir / f"stitch_{metric}.png",
        _HEADERS[metric],
        limits=(0.0, 1.0) if metric == "accuracy" else None,
    )
    return f"stitch_{metric}.png"
