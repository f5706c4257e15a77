"""Compiled blueprint vs. the same model written by hand, in one run.

The compiled GPT (blueprints/gpt.yaml) and ssmgraph.testing.reference.GPT hold the same
weights and compute the same function; the ratio of their times is the compiler's overhead.
Goal: forward+backward overhead <= 2%. The built-in blocks' oneDNN linear path is switched off
while timing (``onednn_linear(False)``), so that both sides run the same kernels and the
ratio measures the compiler, not the matmul library.

    python -m benchmarks.bench_overhead [--batch 8 --seq 256 --d-model 256 --layers 4] [--device cuda] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import ssmgraph
from benchmarks.common import interleaved, write_results
from ssmgraph.kernels import onednn_linear
from ssmgraph.testing.reference import GPT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = ssmgraph.build("gpt", d_model=args.d_model, layers=args.layers, heads=args.heads, vocab=256, max_len=args.seq)
    hand = GPT(256, args.d_model, args.layers, args.heads, args.seq, sdpa=True)
    hand.load_from_blueprint_model(model)
    model, hand = model.to(args.device), hand.to(args.device)
    tokens = torch.randint(0, 256, (args.batch, args.seq), device=args.device)
    torch.testing.assert_close(model(tokens), hand(tokens), rtol=1e-5, atol=1e-5)

    def train_step(m: torch.nn.Module):
        def run() -> None:
            m.zero_grad(set_to_none=True)
            with onednn_linear(False):
                m(tokens).float().logsumexp(-1).mean().backward()

        return run

    def forward(m: torch.nn.Module):
        def run() -> None:
            with torch.no_grad(), onednn_linear(False):
                m(tokens)

        return run

    rows = []
    for mode, make in (("forward+backward", train_step), ("forward", forward)):
        medians = interleaved({"ssmgraph": make(model), "hand-written": make(hand)}, rounds=args.rounds)
        tokens_per_s = args.batch * args.seq / medians["ssmgraph"]
        rows.append(
            {
                "mode": mode,
                "ssmgraph s": medians["ssmgraph"],
                "hand-written s": medians["hand-written"],
                "overhead %": 100 * (medians["ssmgraph"] / medians["hand-written"] - 1),
                "ssmgraph tokens/s": round(tokens_per_s),
            }
        )
    write_results("overhead" + ("_cuda" if args.device == "cuda" else ""), rows, args.out)


if __name__ == "__main__":
    main()
