"""The fp32 CPU linear path of the built-in blocks (oneDNN) against ``F.linear`` (MKL).

    python -m benchmarks.bench_linear [--rounds 9] [--out benchmarks/results]

Two views, each timed in alternation in one process (``ssmgraph.ops.linear`` switched on
and off between calls):

- per layer shape of the GPT-2 benchmark model (batch 8 × length 256 rows): forward, and
  forward + backward, of one linear layer;
- whole models: ``bench_hf``'s training step (forward + cross-entropy + backward) of its
  GPT-2, Llama and Mamba models as ssmgraph imports them, batch 8 × length 256.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import ssmgraph.ops.linear as fast
from benchmarks.bench_hf import VOCAB, build_pair, training_step
from benchmarks.common import interleaved, write_results

ROWS = 8 * 256
SHAPES = {"qkv 256→768": (256, 768), "out 256→256": (256, 256), "fc1 256→1024": (256, 1024), "fc2 1024→256": (1024, 256)}
FAMILIES = ("gpt2", "llama", "mamba")


def switched(fn: Callable[[], Any], on: bool) -> Callable[[], None]:
    def run() -> None:
        with fast.onednn_linear(on):
            fn()

    return run


def compare(fn: Callable[[], Any], rounds: int) -> dict[str, float]:
    times = interleaved({"F.linear": switched(fn, False), "oneDNN": switched(fn, True)}, rounds=rounds)
    return {
        "F.linear ms": round(1000 * times["F.linear"], 2),
        "oneDNN ms": round(1000 * times["oneDNN"], 2),
        "speed-up ×": round(times["F.linear"] / times["oneDNN"], 3),
    }


def layer_rows(rounds: int) -> list[dict[str, Any]]:
    rows = []
    for name, (d_in, d_out) in SHAPES.items():
        x = torch.randn(ROWS, d_in, requires_grad=True)
        layer = fast.Linear(d_in, d_out)

        def forward(layer: torch.nn.Module = layer, x: torch.Tensor = x) -> None:
            with torch.no_grad():
                layer(x)

        def train(layer: torch.nn.Module = layer, x: torch.Tensor = x) -> None:
            layer.zero_grad(set_to_none=True)
            x.grad = None
            layer(x).sum().backward()

        rows.append({"what": f"{name}, forward", **compare(forward, rounds)})
        rows.append({"what": f"{name}, forward + backward", **compare(train, rounds)})
    return rows


def model_rows(rounds: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in FAMILIES:
            _, ours = build_pair(family, 257, Path(tmp), "cpu")
            tokens = torch.randint(0, VOCAB, (8, 257))
            rows.append({"what": f"{family} training step, 8 × 256", **compare(training_step(ours.train(), tokens), rounds)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if fast._ONEDNN_LINEAR is None:
        raise SystemExit("this PyTorch has no oneDNN linear op (or SSMGRAPH_ONEDNN_LINEAR=0): nothing to compare")
    write_results("linear_onednn", layer_rows(args.rounds) + model_rows(args.rounds), args.out)


if __name__ == "__main__":
    main()
