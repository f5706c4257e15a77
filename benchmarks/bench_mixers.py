"""Every registered mixer on this machine: forward+backward, forward and generation speed.

Each `mix.*` block is built at width D and run on a batch of B sequences of length L
(defaults: B=8, L=1024, D=256, the sizes issue #3 asks for). Generation runs the block's
recurrent `step` for --gen-steps tokens after an L-token prefix state (for attention: a KV
cache of L tokens), so its time per token shows whether decoding is O(1) in the length.

    python -m benchmarks.bench_mixers [--mixers mix.attention,mix.lstm] [--seq 1024] [--device cuda] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import time_call, write_results
from ssmgraph.registry.plugins import get_registry
from ssmgraph.registry.specs import TensorType


def build_mixer(name: str, dim: int) -> torch.nn.Module:
    spec = get_registry().get(name)
    assert spec is not None, name
    return spec.factory([TensorType(("batch", "seq", dim))], **spec.defaults())


def bench(name: str, args: argparse.Namespace) -> dict[str, object]:
    torch.manual_seed(0)
    module = build_mixer(name, args.dim).to(args.device)
    x = torch.randn(args.batch, args.seq, args.dim, device=args.device, requires_grad=True)

    def train() -> None:
        module.zero_grad(set_to_none=True)
        module(x).square().mean().backward()

    def forward() -> None:
        with torch.no_grad():
            module(x)

    tokens = args.batch * args.seq
    row: dict[str, object] = {
        "mixer": name,
        "params": sum(p.numel() for p in module.parameters()),
        "fwd+bwd tokens/s": round(tokens / min(time_call(train, warmup=1, repeats=args.repeats))),
        "fwd tokens/s": round(tokens / min(time_call(forward, warmup=1, repeats=args.repeats))),
    }
    if hasattr(module, "step"):
        with torch.no_grad():
            try:
                _, state = module(x.detach(), return_state=True)
            except (TypeError, RuntimeError, ValueError):
                state = module.init_state(args.batch, device=args.device)
            x_t = torch.randn(args.batch, args.dim, device=args.device)

            def generate() -> None:
                s = state
                for _ in range(args.gen_steps):
                    _, s = module.step(x_t, s)

            seconds = min(time_call(generate, warmup=1, repeats=3))
        row["gen tokens/s"] = round(args.batch * args.gen_steps / seconds)
    else:
        row["gen tokens/s"] = "no step"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixers", default="", help="comma-separated block names (default: every mix.* block)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--gen-steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    registry = get_registry()
    names = args.mixers.split(",") if args.mixers else [s.name for s in registry.search("mix.*") if s.inputs == ("x",)]
    rows = [bench(name, args) for name in names]
    write_results("mixers" + ("_cuda" if args.device == "cuda" else ""), rows, args.out)


if __name__ == "__main__":
    main()
