"""Training models of different architectures together, on digits and on a byte-level LM, and
distilling one architecture into another (`python -m benchmarks.merge_results --only mutual,lmmutual,distill`).

mutual    Transformer (RoPE) + Mamba + LSTM classifiers on sequential digits, trained together
          (`merge_method: mutual`, KL towards the ensemble only, warm-up, weighting) against each trained alone
          (and, with control=True, the earlier recipe: KL + features from step 0, same peers).
lmmutual  a `gpt` (learned positions) and a `mamba_model` byte-level LM on the bundled English
          text, trained together against each alone: held-out bits per byte.
lmmutual_control  the same peers with the earlier recipe (KL and features from the first step).
distill   a `mamba_model` teacher trained on the English text, distilled into a `gpt` student
          (`merge_method: distill`) against the same student trained alone for the same steps.

Each returns the merge reports (read by merge_results.py, which writes the JSON).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.merge_results import run_recipe, run_seeds, train_model

MUTUAL = """
merge_method: mutual
models:
  - {{name: transformer, blueprint: classifier, set: {{mixer: mix.attention, d_model: 48, layers: 2, {positions}}}}}
  - {{name: mamba, blueprint: classifier, set: {{mixer: mix.mamba, d_model: 48, layers: 2}}}}
  - {{name: lstm, blueprint: classifier, set: {{mixer: mix.lstm, d_model: 48, layers: 2}}}}
parameters: {{steps: {steps}, lr: 3e-3, {parameters}}}
data: {{task: digits, batch_size: 32, eval_batches: 12}}
"""
ROPE = "layer_args: {heads: 4, rope: true}"
TUNED = (
    "kl_weight: 1.0, temperature: 2.0, consistency: logits, kl_warmup: {warmup}, peer_weighting: correct, d_common: 16,"
    " kl_target: ensemble"
)
EARLIER = "kl_weight: 1.0, feature_weight: 0.1, d_common: 32"


def run_mutual(
    workdir: Path, out: Path, steps: int = 2000, seeds: tuple[int, ...] = (0, 1), control: bool = False
) -> dict[str, Any]:
    """At 2,000 steps the three peers are of comparable strength alone (94–97%); one run per seed."""
    tuned = MUTUAL.format(positions=ROPE, steps=steps, parameters=TUNED.format(warmup=steps // 5))
    results = run_seeds(lambda seed: f"seed: {seed}\n{tuned}", seeds, workdir, out, "mutual")
    if control:  # the earlier recipe (KL and features from the first step) on the same peers
        text = MUTUAL.format(positions=ROPE, steps=steps, parameters=EARLIER)
        results["earlier_recipe"] = run_recipe(text, workdir, out, "mutual_earlier")
    return results


LM_SHAPES = "d_model: 32, layers: 2"
LM_DATA = "{task: bytes, options: {corpus: en, seq_len: 32, valid_fraction: 0.2}, batch_size: 16, eval_batches: 10}"


LM_PEERS = f"""
    models:
      - {{name: gpt, blueprint: gpt, set: {{d_model: 64, layers: 2, heads: 4, max_len: 32}}}}
      - {{name: mamba, blueprint: mamba_model, set: {{{LM_SHAPES}, d_state: 8}}}}
"""
"""A gpt twice as wide as the Mamba: after 2,000 steps the two are about as strong (a weaker peer drags the other
down); of different widths, they cannot share an embedding."""


LM_MUTUAL = """
    merge_method: mutual
    seed: {seed}
    {peers}
    parameters: {{steps: {steps}, lr: 3e-3, kl_weight: 1.0, temperature: 1.0, consistency: logits, kl_warmup: {warmup},
                  peer_weighting: correct, share_embedding: false}}
    data: {data}
"""


def run_lmmutual(workdir: Path, out: Path, steps: int = 2000, seeds: tuple[int, ...] = (0, 1, 2)) -> dict[str, Any]:
    """At 2,000 steps the two peers are of equal strength alone (about 2.6 bits per byte); one run per seed
    (initialisation and data order)."""

    def recipe(seed: int) -> str:
        return LM_MUTUAL.format(peers=LM_PEERS, data=LM_DATA, seed=seed, steps=steps, warmup=steps // 5)

    return run_seeds(recipe, seeds, workdir, out, "lmmutual")


def run_lmmutual_control(workdir: Path, out: Path, steps: int = 2000) -> dict[str, Any]:
    """The same peers with the earlier recipe: KL and features from the first step, every position alike."""
    text = f"""
    merge_method: mutual
    {LM_PEERS}
    parameters: {{steps: {steps}, lr: 3e-3, kl_weight: 1.0, feature_weight: 0.1, share_embedding: false}}
    data: {LM_DATA}
    """
    return run_recipe(text, workdir, out, "lmmutual_control")


def run_distill(workdir: Path, out: Path, steps: int = 300) -> dict[str, Any]:
    teacher = train_model(  # a Mamba teacher: at these sizes Mamba learns bytes much faster than attention
        "mamba_model",
        "bytes",
        {"d_model": 64, "layers": 2},
        workdir,
        "teacher",
        seed=0,
        steps=600,
        batch_size=16,
        task_options={"corpus": "en", "seq_len": 32, "valid_fraction": 0.2},
    )
    text = f"""
    merge_method: distill
    models:
      - {{name: mamba, checkpoint: {teacher}}}
      - {{name: gpt, blueprint: gpt, set: {{d_model: 64, layers: 2, heads: 4, max_len: 32}}}}
    parameters: {{steps: {steps}, lr: 3e-3, alpha: 0.5, temperature: 1.0}}
    data: {LM_DATA}
    """
    return run_recipe(text, workdir, out, "distill")
