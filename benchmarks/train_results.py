"""Re-run the training results of docs/results.md on this machine (CPU, minutes each).

    python -m benchmarks.train_results [--only selective_copying,digits] [--out benchmarks/results]

Each experiment trains a shipped blueprint on a built-in task through the same code path as
`ssmgraph train` and reports the final held-out metrics and the best of the ten held-out
evaluations (the bundled text is small, so language models overfit it). Parameter counts
are printed next to each result.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssmgraph.graph.compile import count_parameters
from ssmgraph.train.config import TrainConfig
from ssmgraph.train.metrics import read_metrics
from ssmgraph.train.trainer import train


@dataclass
class Experiment:
    group: str
    label: str
    blueprint: str
    task: str
    overrides: dict[str, Any]
    task_options: dict[str, Any] = field(default_factory=dict)
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3


SC = {"seq_len": 64, "n_memorize": 8, "vocab": 10}
IH = {"seq_len": 64, "vocab": 16}
BYTES = {"seq_len": 128}
EXPERIMENTS = [
    Experiment("selective_copying", "mamba", "mamba", "selective_copying", {"d_model": 64, "layers": 2}, SC, steps=3000),
    Experiment(
        "selective_copying",
        "s4d (time-invariant)",
        "s4d",
        "selective_copying",
        {"d_model": 80, "layers": 2, "layer_args": {"d_state": 64}},
        SC,
        steps=3000,
    ),
    Experiment("induction_heads", "mamba", "mamba", "induction_heads", {"d_model": 64, "layers": 2}, IH, steps=1500),
    Experiment(
        "induction_heads",
        "attention (llama: RoPE)",
        "llama",
        "induction_heads",
        {"d_model": 64, "layers": 2, "heads": 4},
        IH,
        steps=1500,
        lr=1e-3,
    ),
    Experiment(
        "induction_heads",
        "attention (gpt: learned positions)",
        "gpt",
        "induction_heads",
        {"d_model": 64, "layers": 2, "heads": 4},
        IH,
        steps=1500,
    ),
    Experiment(
        "digits", "s4d", "classifier", "digits", {"mixer": "mix.s4d", "d_model": 64, "layers": 2}, steps=1500, batch_size=64
    ),
    Experiment(
        "digits", "lstm", "classifier", "digits", {"mixer": "mix.lstm", "d_model": 64, "layers": 2}, steps=4000, batch_size=64
    ),
    # about 260k parameters each
    Experiment(
        "bytes",
        "transformer (gpt)",
        "gpt",
        "bytes",
        {"d_model": 96, "layers": 2, "heads": 4, "max_len": 128},
        BYTES,
        steps=600,
        lr=2e-3,
    ),
    Experiment("bytes", "mamba", "mamba", "bytes", {"d_model": 104, "layers": 3}, BYTES, steps=600, lr=2e-3),
    Experiment("bytes", "lstm", "lstm", "bytes", {"d_model": 96, "layers": 1, "hidden": 176}, BYTES, steps=600, lr=2e-3),
]


def run(experiment: Experiment, workdir: Path) -> dict[str, Any]:
    config = TrainConfig(
        task=experiment.task,
        task_options=experiment.task_options,
        steps=experiment.steps,
        batch_size=experiment.batch_size,
        lr=experiment.lr,
        warmup_steps=100,
        eval_interval=max(1, experiment.steps // 10),
        eval_size=1024,
        log_interval=50,
        checkpoint_interval=experiment.steps,
        keep_checkpoints=1,
    )
    started = time.perf_counter()
    slug = "".join(c if c.isalnum() else "-" for c in f"{experiment.group}-{experiment.label}")
    result = train(experiment.blueprint, workdir / slug, config, overrides=experiment.overrides, progress=False)
    assert result.model is not None
    evals = [r for r in read_metrics(result.run_dir) if r["split"] == "eval"]
    best = min(evals, key=lambda r: r["loss"])
    return {
        "group": experiment.group,
        "model": experiment.label,
        "blueprint": experiment.blueprint,
        "parameters": count_parameters(result.model),
        "steps": experiment.steps,
        "minutes": round((time.perf_counter() - started) / 60, 1),
        **{k.removeprefix("eval_"): round(v, 4) for k, v in result.metrics.items() if k.startswith("eval_")},
        "best_step": best["step"],
        **{f"best_{k}": round(v, 4) for k, v in best.items() if k in ("loss", "accuracy", "bits")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated groups (selective_copying, induction_heads, digits, bytes)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    groups = set(args.only.split(",")) if args.only else None
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for experiment in EXPERIMENTS:
            if groups is None or experiment.group in groups:
                row = run(experiment, Path(tmp))
                print(json.dumps(row), flush=True)
                rows.append(row)
                if args.out:  # after every experiment, so a long run keeps what it measured
                    args.out.mkdir(parents=True, exist_ok=True)
                    (args.out / "train_results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
