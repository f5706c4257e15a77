"""Mixers on associative recall (MQAR) and selective copying, at about equal parameter count.

Every mixer sits in the same language model: token embedding, ``--layers`` pre-RMSNorm
residual layers of the mixer and a SwiGLU FFN, final RMSNorm, LM head tied to the embedding.
The width of each model is the multiple of 8 whose parameter count comes closest to that
of the ``mix.attention`` model at ``--d-model``, so the mixers compete at equal size.
Training runs the loop of ``ssmgraph train``; the table holds the held-out accuracy on the
answer positions at the end and the best of the evaluations.

Zoology (Arora et al. 2023) finds that gated convolutions (H3, Hyena) fall short on MQAR at
small width while attention solves it; the Mamba-2 (Dao & Gu 2024, §9.1) and Gated DeltaNet
(Yang et al. 2025) papers report that input-dependent state updates solve it too. A small
budget shows at most the early ordering.

    python -m benchmarks.mixer_tasks [--mixers mix.gated_deltanet,mix.s4d] [--tasks mqar] [--steps 2000] [--out benchmarks/results]

Mixers that are not installed are left out (the default list names optional ones).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import write_results
from ssmgraph.blueprint import load_blueprint
from ssmgraph.blueprint.yamlsafe import dump_yaml
from ssmgraph.graph.compile import compile_blueprint, count_parameters
from ssmgraph.registry.plugins import get_registry
from ssmgraph.train.config import TrainConfig
from ssmgraph.train.metrics import read_metrics
from ssmgraph.train.trainer import train

DEFAULT_MIXERS = "mix.gated_deltanet,mix.deltanet,mix.gla,mix.mamba2,mix.mlstm,mix.s4d,mix.attention"
MIXER_ARGS: dict[str, dict[str, Any]] = {
    "mix.attention": {"heads": 4, "rope": True},
    "mix.gla": {"heads": 4},
    "mix.deltanet": {"heads": 4},
    "mix.gated_deltanet": {"heads": 4, "expand_v": 1.0},  # fla's 2.0 would leave it a narrower model at equal size
    "mix.mamba2": {"headdim": 16},
    "mix.mlstm": {"heads": 4},
    "mix.s4d": {"d_state": 64},
}
"""Arguments each mixer gets (others: its defaults)."""


def blueprint(vocab: int) -> dict[str, Any]:
    """The shared language model; ``mixer``, ``mixer_args``, ``d_model``, ``layers`` are its parameters."""
    layer = {
        "norm": "norm.rms",
        "mixer": "$mixer",
        "mixer_args": "$mixer_args",
        "ffn": "ffn.glu",
        "ffn_args": {"multiple_of": 16},
    }
    return {
        "ssmgraph": 1,
        "name": "mixer_lm",
        "params": {"vocab": vocab, "d_model": 64, "layers": 2, "mixer": "mix.attention", "mixer_args": {}},
        "inputs": {"tokens": {"dtype": "int64", "shape": ["batch", "seq"]}},
        "nodes": {
            "embed": {"block": "embed.token", "in": "tokens", "args": {"vocab": "$vocab", "dim": "$d_model"}},
            "blocks": {"repeat": "$layers", "in": "embed", "use": "fragments/prenorm.yaml", "args": layer},
            "norm_f": {"block": "norm.rms", "in": "blocks"},
            "head": {"block": "head.lm", "in": "norm_f", "args": {"vocab": "$vocab"}, "tie": {"weight": "embed.weight"}},
        },
        "outputs": {"logits": "head"},
    }


def parameters(path: Path, overrides: dict[str, Any]) -> int | None:
    try:
        return count_parameters(compile_blueprint(load_blueprint(path, overrides)))
    except Exception:  # noqa: BLE001 - a width the mixer's shape rule refuses is skipped
        return None


def matched_width(path: Path, mixer: str, base: dict[str, Any], target: int, d_model: int) -> tuple[int, int]:
    """(width, parameters) of the multiple of 8 from d_model/2 to 2·d_model whose count is closest to ``target``."""
    sizes = {}
    for width in range(max(8, d_model // 16 * 8), 2 * d_model + 1, 8):
        count = parameters(path, {**base, "mixer": mixer, "mixer_args": MIXER_ARGS.get(mixer, {}), "d_model": width})
        if count is not None:
            sizes[width] = count
    if not sizes:
        raise SystemExit(f"{mixer}: no width from {d_model // 2} to {2 * d_model} builds")
    width = min(sizes, key=lambda w: abs(sizes[w] - target))
    return width, sizes[width]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixers", default=DEFAULT_MIXERS, help="comma-separated mixer blocks")
    parser.add_argument("--tasks", default="mqar,selective_copying")
    parser.add_argument("--d-model", type=int, default=64, help="width of the attention model that sets the parameter budget")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seq-len", type=int, default=256, help="MQAR length")
    parser.add_argument("--pairs", type=int, default=8, help="MQAR key-value pairs (and queries)")
    parser.add_argument("--mqar-vocab", type=int, default=64)
    parser.add_argument("--copy-len", type=int, default=128, help="selective copying length")
    parser.add_argument("--copy-tokens", type=int, default=8, help="selective copying: tokens to memorise")
    parser.add_argument("--eval-size", type=int, default=256, help="held-out sequences per evaluation")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    registry = get_registry()
    mixers = [m for m in args.mixers.split(",") if registry.get(m) is not None]
    missing = sorted(set(args.mixers.split(",")) - set(mixers))
    if missing:
        print(f"not installed, left out: {', '.join(missing)}", flush=True)
    options = {
        "mqar": {"seq_len": args.seq_len, "n_pairs": args.pairs, "vocab": args.mqar_vocab},
        "selective_copying": {"seq_len": args.copy_len, "n_memorize": args.copy_tokens, "vocab": 10},
    }
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            path = Path(tmp) / f"{task}.yaml"
            path.write_text(dump_yaml(blueprint(options[task]["vocab"])))
            base = {"layers": args.layers}
            target = parameters(
                path, {**base, "mixer": "mix.attention", "mixer_args": MIXER_ARGS["mix.attention"], "d_model": args.d_model}
            )
            assert target is not None
            for mixer in mixers:
                width, count = matched_width(path, mixer, base, target, args.d_model)
                config = TrainConfig(
                    task=task,
                    task_options=options[task],
                    steps=args.steps,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    warmup_steps=min(100, args.steps // 10),
                    eval_interval=max(1, args.steps // 5),
                    eval_size=args.eval_size,
                    log_interval=max(1, args.steps // 10),
                    checkpoint_interval=args.steps,
                    keep_checkpoints=1,
                )
                overrides = {**base, "mixer": mixer, "mixer_args": MIXER_ARGS.get(mixer, {}), "d_model": width}
                started = time.perf_counter()
                result = train(path, Path(tmp) / f"{task}-{mixer}", config, overrides=overrides, progress=False)
                evals = read_evals(result.run_dir)
                row = {
                    "task": task,
                    "mixer": mixer,
                    "d_model": width,
                    "parameters": count,
                    "steps": args.steps,
                    "minutes": round((time.perf_counter() - started) / 60, 2),
                    "accuracy": round(result.metrics.get("eval_accuracy", float("nan")), 3),
                    "best accuracy": round(max(r.get("accuracy", 0.0) for r in evals), 3) if evals else float("nan"),
                }
                print(row, flush=True)
                rows.append(row)
                if args.out is not None:  # after every run, so a long one keeps what it measured
                    args.out.mkdir(parents=True, exist_ok=True)
                    (args.out / "mixer_tasks.md").write_text(markdown(rows, args))
    write_results("mixer_tasks", rows, args.out)


def read_evals(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in read_metrics(run_dir) if r["split"] == "eval"]


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The table with the settings it was measured with."""
    head = (
        f"# Mixers on MQAR and selective copying\n\n`python -m benchmarks.mixer_tasks --tasks {args.tasks} "
        f"--mixers {args.mixers} --steps {args.steps} "
        f"--batch-size {args.batch_size} --lr {args.lr} --d-model {args.d_model} --layers {args.layers} "
        f"--seq-len {args.seq_len} --pairs {args.pairs} --mqar-vocab {args.mqar_vocab} --copy-len {args.copy_len} "
        f"--copy-tokens {args.copy_tokens} --eval-size {args.eval_size}`; accuracy = held-out accuracy on the "
        "answer positions (MQAR: the values at the queries; selective copying: the memorised tokens).\n\n"
    )
    columns = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows]
    return head + "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
