"""``lmstitch`` of ``python -m benchmarks.merge_results``: stitching byte-level language models.

Two `gpt` LMs (seeds 0 and 1) and one `mamba_model` LM of similar size are trained on the
bundled English text (`bytes`); `merge_method: stitch` then joins gpt0 → gpt1 (same
architecture) and gpt0 → mamba (cross architecture), scoring every layer pair by held-out
loss, fine-tuning the best two and the controls. At the cross-architecture pair chosen, each
lever of the method is switched on alone (`at`, `learn`, `finetune`, `estimator`, `tie`);
`finetune: stitch+block` (B's whole next layer trains too) with its controls fine-tuned alike.
Every output is also evaluated on the held-out French text (out of domain, and unseen by the
pair selection, which reads the English held-out part). The goals: the cross-architecture
stitch no worse than the worse source, the same-architecture one within 0.05 bits/byte of
the better source (English held-out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ssmgraph
from benchmarks.merge_results import run_recipe, slug, train_model
from ssmgraph.train.evaluation import evaluate
from ssmgraph.train.fitting import make_task

FULL = {
    "gpt": {"d_model": 96, "layers": 4, "heads": 4, "max_len": 64},
    "mamba": {"d_model": 96, "layers": 3, "d_state": 8},
    "seq_len": 64,
    "batch_size": 16,
    "steps": {"gpt": 800, "mamba": 150},
    "finetune_steps": 120,
    "probe_batches": 8,
    "eval_batches": 6,
}
"""The sizes of the run in docs/results.md (about 30 minutes on a busy 2-core machine): the gpt and the
mamba_model reach equal held-out bits per byte (2.63, 2.62)."""

LEVERS = {
    "at: normed": {"at": "normed"},
    "learn: scale": {"learn": "scale"},
    "learn: map+scale": {"learn": "map+scale"},
    "finetune: stitch+norm": {"finetune": "stitch+norm"},
    "finetune: stitch+block": {"finetune": "stitch+block", "finetune_controls": "true"},
    "estimator: procrustes": {"estimator": "procrustes"},
    "estimator: cca": {"estimator": "cca"},
    "estimator: ot": {"estimator": "ot"},
    "tie: keep": {"tie": "keep"},
}
"""Each lever alone, against the default stitch (lstsq, residual, the whole map, the stitch only)."""

COMBINED = {"at": "normed", "finetune": "stitch+norm", "learn": "map+scale"}


def lever_runs(size: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """:data:`LEVERS`, then the three that helped together, and fine-tuning three times as long."""
    longer = 3 * size["finetune_steps"]
    return {
        **LEVERS,
        "combined: at normed, stitch+norm, map+scale": COMBINED,
        f"finetune_steps: {longer}": {"finetune_steps": longer},
        f"combined, finetune_steps: {longer}": {**COMBINED, "finetune_steps": longer},
    }


def _params(size: dict[str, Any], **extra: Any) -> str:
    base = {"estimator": "lstsq", "probe_batches": size["probe_batches"], "finetune_steps": size["finetune_steps"]}
    return "{" + ", ".join(f"{k}: {v}" for k, v in {**base, **extra}.items()) + "}"


def _stitch(
    runs: dict[str, Path], a: str, b: str, params: str, size: dict[str, Any], workdir: Path, out: Path, name: str
) -> dict:
    text = f"""
    merge_method: stitch
    models: [{{name: {a}, checkpoint: {runs[a]}}}, {{name: {b}, checkpoint: {runs[b]}}}]
    parameters: {params}
    data: {{task: bytes, options: {{seq_len: {size["seq_len"]}}}, batch_size: {size["batch_size"]}, eval_batches: {size["eval_batches"]}}}
    """
    report = run_recipe(text, workdir, out, name)
    french = make_task("bytes", {"corpus": "fr", "seq_len": size["seq_len"]})
    report["french_bits_per_byte"] = evaluate(ssmgraph.load(workdir / name), french, size["batch_size"], 10_000)["bits_per_byte"]
    return report


def _best(report: dict[str, Any]) -> dict[str, float]:
    best = report["metrics"]["best"]
    return best.get("finetuned", best["closed_form"])


def run(workdir: Path, out: Path, size: dict[str, Any] = FULL) -> dict[str, Any]:
    opts = {"seq_len": size["seq_len"]}
    runs = {
        f"gpt{seed}": train_model(
            "gpt",
            "bytes",
            size["gpt"],
            workdir,
            f"gpt{seed}",
            seed=seed,
            steps=size["steps"]["gpt"],
            batch_size=size["batch_size"],
            task_options=opts,
        )
        for seed in (0, 1)
    }
    runs["mamba"] = train_model(
        "mamba_model",
        "bytes",
        size["mamba"],
        workdir,
        "mamba",
        seed=2,
        steps=size["steps"]["mamba"],
        batch_size=size["batch_size"],
        task_options=opts,
    )
    french = make_task("bytes", {"corpus": "fr", "seq_len": size["seq_len"]})
    sources_fr = {
        name: evaluate(ssmgraph.load(path), french, size["batch_size"], 10_000)["bits_per_byte"] for name, path in runs.items()
    }
    main = _params(size, pairs="all", finetune_pairs=2, finetune_controls="true")
    results: dict[str, Any] = {
        "sizes": size,
        "sources_french_bits_per_byte": sources_fr,
        "sources_trained_longer": trained_longer(runs, size, workdir),
    }
    for name, (a, b) in {"same_architecture": ("gpt0", "gpt1"), "cross_architecture": ("gpt0", "mamba")}.items():
        results[name] = _stitch(runs, a, b, main, size, workdir, out, f"lmstitch_{name}")
    chosen = results["cross_architecture"]["metrics"]["best"]
    default = {"english": _best(results["cross_architecture"]), "closed_form": chosen["closed_form"]}
    levers = {"default (lstsq, residual, learn map, finetune stitch)": default}
    for lever, extra in lever_runs(size).items():
        params = _params(size, layer_a=chosen["layer_a"], layer_b=chosen["layer_b"], **extra)
        name = f"lmstitch_lever_{slug(lever)}"
        report = _stitch(runs, "gpt0", "mamba", params, size, workdir, out, name)
        levers[lever] = {
            "english": _best(report),
            "closed_form": report["metrics"]["best"]["closed_form"],
            "french_bits_per_byte": report["french_bits_per_byte"],
            "trained_parameters": report["metrics"]["best"].get("trained_parameters"),
            "controls": report["metrics"]["controls"],
        }
    levers["default (lstsq, residual, learn map, finetune stitch)"]["french_bits_per_byte"] = results["cross_architecture"][
        "french_bits_per_byte"
    ]
    results["levers"] = levers
    results["goals"] = goals(results)
    print(results["goals"], flush=True)
    return results


def trained_longer(runs: dict[str, Path], size: dict[str, Any], workdir: Path) -> dict[str, dict[str, float]]:
    """The control for fine-tuning: each source trained as many steps more as the stitch is
    fine-tuned (`ssmgraph train --init`, all its weights), English and French bits per byte."""
    english = make_task("bytes", {"seq_len": size["seq_len"]})
    french = make_task("bytes", {"corpus": "fr", "seq_len": size["seq_len"]})
    out = {}
    for name, path in runs.items():
        longer = train_model(
            None,
            "bytes",
            {},
            workdir,
            f"{name}_longer",
            init=path,
            seed=5,
            steps=size["finetune_steps"],
            batch_size=size["batch_size"],
            task_options={"seq_len": size["seq_len"]},
        )
        model = ssmgraph.load(longer)
        out[name] = {
            "steps": size["finetune_steps"],
            "english": evaluate(model, english, size["batch_size"], 10_000)["bits_per_byte"],
            "french": evaluate(model, french, size["batch_size"], 10_000)["bits_per_byte"],
        }
    return out


def goals(results: dict[str, Any]) -> dict[str, Any]:
    """The two targets, on English held-out bits per byte."""
    out = {}
    for name in ("same_architecture", "cross_architecture"):
        sources = [v["bits_per_byte"] for v in results[name]["metrics"]["sources"].values()]
        stitched = _best(results[name])["bits_per_byte"]
        bar = min(sources) + 0.05 if name == "same_architecture" else max(sources)
        out[name] = {"stitched": stitched, "sources": sources, "bar": bar, "met": stitched <= bar}
    bar = out["cross_architecture"]["bar"]
    out["cross_architecture_levers"] = {
        lever: value["english"]["bits_per_byte"] <= bar for lever, value in results.get("levers", {}).items()
    }
    return out
