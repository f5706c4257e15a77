"""Superposition across architectures (`python -m benchmarks.merge_results --only xsuperpose`): an
English `gpt` (attention, learned positions) and a French `mamba_model` of one width and depth,
put into one model (`merge_method: superpose`), against each specialist — with the method's
defaults (pointwise linear autoencoders, reconstruction weight 1), then with each of two levers
and both: left-padded `causal_conv` autoencoders, and a reconstruction weight of 0.1.

No weight-space baseline exists here: the two models' weights differ in names and shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.merge_results import run_recipe, slug, train_model

SHAPES = {"d_model": 48, "layers": 2}
OPTIONS = {"seq_len": 20, "valid_fraction": 0.5}
VARIANTS = {
    "defaults": "",
    "recon_weight 0.1": "recon_weight: 0.1",
    "causal_conv": "autoencoder: causal_conv",
    "causal_conv, recon_weight 0.1": "autoencoder: causal_conv, recon_weight: 0.1",
}
"""The superposition recipes compared, as extra parameters; plots are kept for the defaults and for LEAD."""
LEAD = "causal_conv, recon_weight 0.1"


def run(workdir: Path, out: Path, steps: int = 400, superpose_steps: int = 1000) -> dict[str, Any]:
    blueprints = {"en": ("gpt", {**SHAPES, "heads": 4, "max_len": 32}), "fr": ("mamba_model", SHAPES)}
    runs = {
        lang: train_model(
            blueprint,
            "bytes",
            overrides,
            workdir,
            lang,
            seed=0,
            steps=steps,
            lr=2e-3,
            batch_size=16,
            task_options={**OPTIONS, "corpus": lang},
        )
        for lang, (blueprint, overrides) in blueprints.items()
    }
    results = {}
    for label, extra in VARIANTS.items():
        parameters = f"alpha: vector, steps: {superpose_steps}" + (f", {extra}" if extra else "")
        text = f"""
        merge_method: superpose
        models: [{{name: en, checkpoint: {runs["en"]}}}, {{name: fr, checkpoint: {runs["fr"]}}}]
        parameters: {{options_a: {{corpus: en}}, options_b: {{corpus: fr}}, {parameters}}}
        data: {{task: bytes, options: {OPTIONS}, batch_size: 32, eval_batches: 10}}
        """
        name = "xsuperpose" if label == "defaults" else f"xsuperpose_{slug(label)}"
        results[label] = run_recipe(text, workdir, out, name, plots=label in (LEAD, "defaults"))
    return results
