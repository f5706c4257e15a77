"""Re-run the merge results of docs/results.md on this machine (CPU, minutes).

    python -m benchmarks.merge_results [--only barrier,mutual,lmmutual,distill,stitch,lmstitch,superpose,xsuperpose] [--out benchmarks/results]

barrier   two runs of one blueprint from different seeds, over a width sweep: the held-out loss
          along the linear path between them, as trained and after aligning the second onto the
          first (`permute`: weight matching of the blocks' internal spaces only, of every space,
          and activation matching of the residual stream); barrier = the largest rise above the
          straight line between the ends.
mutual    Transformer (RoPE) + Mamba + LSTM classifiers trained together (`merge_method: mutual`)
          against each trained alone (benchmarks/merge_mutual.py).
lmmutual  a gpt and a mamba_model byte-level LM trained together against each alone (bits per byte);
          lmmutual_control: the same with the earlier recipe.
distill   a mamba_model byte-level LM distilled into a gpt against the same student trained alone.
stitch    `merge_method: stitch` between two seeds of one blueprint and from a Transformer
          into a Mamba, with its controls.
lmstitch  the same on byte-level language models (bits per byte, English held out and French
          out of domain), with each lever of the stitch alone (benchmarks/merge_lmstitch.py).
superpose an English and a French byte-level LM (one initialisation) put into superposition,
          against each specialist, linear interpolation and task arithmetic.
xsuperpose the same across architectures: an English gpt and a French mamba_model (benchmarks/merge_xsuperpose.py).

Each writes JSON (and PNGs) into --out; the numbers in docs/results.md come from these files.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import ssmgraph
from ssmgraph.merge.recipe import recipe_from_text
from ssmgraph.merge.run import run_merge
from ssmgraph.train.config import TrainConfig
from ssmgraph.train.fitting import make_task
from ssmgraph.train.trainer import evaluate, train


def train_model(
    blueprint: str | None,
    task: str,
    overrides: dict[str, Any],
    workdir: Path,
    name: str,
    *,
    seed: int,
    steps: int,
    lr: float = 3e-3,
    batch_size: int = 64,
    task_options: dict[str, Any] | None = None,
    init: Path | None = None,
) -> Path:
    """A run of ``blueprint`` (or, with ``init``, of the saved model there, from its weights)."""
    config = TrainConfig(
        task=task,
        task_options=task_options or {},
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        eval_interval=steps,
        checkpoint_interval=steps,
        warmup_steps=min(100, steps // 10),
    )
    train(blueprint, workdir / name, config, overrides=overrides, progress=False, init=init)
    return workdir / name


# ---- barrier --------------------------------------------------------------------------------------
def linear_path(a: Any, b_state: dict[str, torch.Tensor], task: Any, points: int = 11, batch_size: int = 128) -> list[float]:
    from ssmgraph.merge.weights import linear

    model = ssmgraph.load(a)
    state_a = {k: v.clone() for k, v in model.state_dict().items()}  # load_state_dict below writes into the live tensors
    losses = []
    for i in range(points):
        t = i / (points - 1)
        model.load_state_dict(linear([state_a, b_state], [1 - t, t]))
        losses.append(evaluate(model, task, batch_size, 10_000)["loss"])
    return losses


def barrier(losses: list[float]) -> float:
    n = len(losses) - 1
    return max(loss - ((1 - i / n) * losses[0] + (i / n) * losses[-1]) for i, loss in enumerate(losses))


BARRIER_SWEEP = {
    "mix.lstm": ((64, 600), (128, 600), (256, 600)),
    "mix.mamba": ((32, 600), (64, 600)),
    "mix.attention": ((32, 600),),
}
"""Mixer → (d_model, training steps) of the width sweep: two layers, two seeds each."""


def barrier_pair(mixer: str, width: int, steps: int, task: Any, workdir: Path, out: Path) -> dict[str, Any]:
    """Two seeds of the classifier with ``mixer`` at ``width``: the loss along the straight line
    between them as trained and after each alignment, and its plot."""
    from ssmgraph.graph.perm_spaces import GraphSpace
    from ssmgraph.merge.permute.matching import activation_matching, weight_matching
    from ssmgraph.merge.permute.model_spaces import model_spaces
    from ssmgraph.merge.plots import curves

    label = f"digits, classifier with {mixer} (d_model {width}, 2 layers, {steps} steps)"
    slug = f"{mixer.removeprefix('mix.')}_{width}"
    overrides = {"mixer": mixer, "d_model": width, "layers": 2}
    runs = [train_model("classifier", "digits", overrides, workdir, f"{slug}-{i}", seed=i, steps=steps) for i in (0, 1)]
    a, b = ssmgraph.load(runs[0]), ssmgraph.load(runs[1])
    state_a, state_b = a.state_dict(), b.state_dict()
    spaces = model_spaces(a)
    generator = torch.Generator().manual_seed(0)
    probes = [(task.sample(32, generator, "train").inputs,) for _ in range(8)]
    residual = activation_matching(a, b, [s for s in spaces if isinstance(s, GraphSpace)], probes)
    aligned = {
        "as trained": state_b,
        "weights, internal spaces": weight_matching(state_a, state_b, model_spaces(a, residual=False))[1],
        "weights, all spaces": weight_matching(state_a, state_b, spaces)[1],
        "activations (residual) + weights": weight_matching(state_a, state_b, spaces, fixed=residual)[1],
    }
    paths = {name: linear_path(runs[0], state, task) for name, state in aligned.items()}
    ts = [i / 10 for i in range(11)]
    curves(
        {name: (ts, path) for name, path in paths.items()},
        "t (0: model A, 1: model B)",
        "held-out loss",
        label,
        out / f"barrier_{slug}.png",
    )
    barriers = {name: barrier(path) for name, path in paths.items()}
    print(label, {name: round(value, 3) for name, value in barriers.items()}, flush=True)
    return {
        "label": label,
        "mixer": mixer,
        "d_model": width,
        "steps": steps,
        "paths": paths,
        "barriers": barriers,
        "ratios": {name: value / max(barriers["as trained"], 1e-12) for name, value in barriers.items()},
        "spaces": len(spaces),
        "units": sum(s.size for s in spaces),
    }


def run_barrier(workdir: Path, out: Path) -> dict[str, Any]:
    from ssmgraph.merge.plots import curves

    task = make_task("digits", {})
    pairs = [
        barrier_pair(mixer, width, steps, task, workdir, out) for mixer, sweep in BARRIER_SWEEP.items() for width, steps in sweep
    ]
    best = {  # per mixer: widths, and the best alignment's barrier over the barrier as trained
        mixer: (
            [r["d_model"] for r in pairs if r["mixer"] == mixer],
            [min(v for k, v in r["ratios"].items() if k != "as trained") for r in pairs if r["mixer"] == mixer],
        )
        for mixer in BARRIER_SWEEP
    }
    curves(
        best,
        "d_model",
        "barrier after the best alignment / as trained",
        "width sweep: two seeds of one classifier",
        out / "barrier_width.png",
    )
    return {r.pop("label"): r for r in pairs}


# ---- mutual, lmmutual, distill: benchmarks/merge_mutual.py ------------------------------------------
def run_recipe(text: str, workdir: Path, out: Path, name: str, plots: bool = True) -> dict[str, Any]:
    """Run a merge recipe; its report (printed too), and its plots copied into ``out`` as ``<name>_*.png``."""
    recipe = recipe_from_text(textwrap.dedent(text), f"{name}.yaml", workdir)
    folder, _ = run_merge(recipe, workdir / name, overwrite=True, progress=False)
    for png in folder.glob("*.png") if plots else ():
        (out / f"{name}_{png.name}").write_bytes(png.read_bytes())
    report = json.loads((folder / "report.json").read_text())
    print((folder / "report.md").read_text(), flush=True)
    return report


def slug(label: str) -> str:
    """``label`` as a file-name part: every character that is not a letter or digit becomes ``_``."""
    return "".join(c if c.isalnum() else "_" for c in label)


def run_seeds(recipe: Callable[[int], str], seeds: tuple[int, ...], workdir: Path, out: Path, name: str) -> dict[str, Any]:
    """One run of ``recipe(seed)`` per seed (``name``, then ``name_seed<k>``), plots kept for the first only."""
    return {
        f"seed {seed}": run_recipe(recipe(seed), workdir, out, name if i == 0 else f"{name}_seed{seed}", plots=i == 0)
        for i, seed in enumerate(seeds)
    }


def run_mutual(workdir: Path, out: Path) -> dict[str, Any]:
    from benchmarks.merge_mutual import run_mutual as run  # it imports this module's helpers

    return run(workdir, out)


def run_lmmutual(workdir: Path, out: Path) -> dict[str, Any]:
    from benchmarks.merge_mutual import run_lmmutual as run

    return run(workdir, out)


def run_lmmutual_control(workdir: Path, out: Path) -> dict[str, Any]:
    from benchmarks.merge_mutual import run_lmmutual_control as run

    return run(workdir, out)


def run_distill(workdir: Path, out: Path) -> dict[str, Any]:
    from benchmarks.merge_mutual import run_distill as run

    return run(workdir, out)


# ---- stitch ----------------------------------------------------------------------------------------
def run_stitch(workdir: Path, out: Path) -> dict[str, Any]:
    shapes = {"d_model": 48, "layers": 3}
    attention = {
        "mixer": "mix.attention",
        "layer_args": {"heads": 4, "rope": True},
        **shapes,
    }  # RoPE: the classifier adds no positions
    runs = {
        "tf0": train_model("classifier", "digits", attention, workdir, "tf0", seed=0, steps=700),
        "tf1": train_model("classifier", "digits", attention, workdir, "tf1", seed=1, steps=700),
        "mamba": train_model("classifier", "digits", {"mixer": "mix.mamba", **shapes}, workdir, "mamba", seed=2, steps=700),
    }
    results = {}
    for name, (a, b) in {"same_architecture": ("tf0", "tf1"), "cross_architecture": ("tf0", "mamba")}.items():
        text = f"""
        merge_method: stitch
        models: [{{name: {a}, checkpoint: {runs[a]}}}, {{name: {b}, checkpoint: {runs[b]}}}]
        parameters: {{estimator: lstsq, pairs: all, finetune_steps: 300}}
        data: {{task: digits, batch_size: 64, eval_batches: 6}}
        """
        results[name] = run_recipe(text, workdir, out, f"stitch_{name}")
    return results


# ---- superpose ------------------------------------------------------------------------------------
def run_superpose(workdir: Path, out: Path) -> dict[str, Any]:
    shapes = {"d_model": 96, "layers": 2, "heads": 4, "max_len": 64}
    opts = {"seq_len": 20, "valid_fraction": 0.5}
    torch.manual_seed(0)
    base = workdir / "base"  # the one initialisation (`ssmgraph build gpt --seed 0 --out base`): both start from it
    ssmgraph.save(ssmgraph.build("gpt", **shapes), base)
    runs = {}
    for lang in ("en", "fr"):
        runs[lang] = train_model(
            None,
            "bytes",
            {},
            workdir,
            lang,
            init=base,
            seed=0,  # data order and dropout only: the weights come from base
            steps=800,
            lr=2e-3,
            batch_size=32,
            task_options={**opts, "corpus": lang},
        )
    text = f"""
    merge_method: superpose
    models: [{{name: en, checkpoint: {runs["en"]}}}, {{name: fr, checkpoint: {runs["fr"]}}}]
    parameters: {{options_a: {{corpus: en}}, options_b: {{corpus: fr}}, alpha: vector, steps: 1200, base: {base}}}
    data: {{task: bytes, options: {opts}, batch_size: 64, eval_batches: 20}}
    """
    return run_recipe(text, workdir, out, "superpose")


def run_xsuperpose(workdir: Path, out: Path) -> dict[str, Any]:
    from benchmarks.merge_xsuperpose import run  # it imports this module's helpers

    return run(workdir, out)


def run_lmstitch(workdir: Path, out: Path) -> dict[str, Any]:
    from benchmarks.merge_lmstitch import run  # it imports this module's helpers

    return run(workdir, out)


EXPERIMENTS = {
    "barrier": run_barrier,
    "mutual": run_mutual,
    "lmmutual": run_lmmutual,
    "lmmutual_control": run_lmmutual_control,
    "distill": run_distill,
    "stitch": run_stitch,
    "lmstitch": run_lmstitch,
    "superpose": run_superpose,
    "xsuperpose": run_xsuperpose,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(EXPERIMENTS), help="comma-separated experiments")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only.split(","):
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = EXPERIMENTS[name](Path(tmp), args.out)
        result = {"seconds": round(time.perf_counter() - started, 1), "torch": torch.__version__, "result": result}
        text = json.dumps(result, indent=2, default=str).replace(tmp, "<workdir>")  # no machine paths in results
        (args.out / f"merge_{name}.json").write_text(text)
        print(f"{name}: {result['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
