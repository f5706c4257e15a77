"""Activation checkpointing (``checkpointing: true``): peak training memory and step time of the
``gpt`` blueprint with and without, in one run.

One training step (forward, cross-entropy, backward) of the plain model against the same model
with every layer of its ``repeat`` stack recomputed in the backward pass
(ssmgraph.train.recompute), same weights, same batch; their gradients are checked equal first.
Peak memory is measured in a fresh process per side (CPU: the resident set's high-water mark;
CUDA: allocated memory), above the level after a warm-up step (weights, gradients and optimizer
buffers are not activations). Goal: >= 40% lower peak memory for <= 35% more time.

    python -m benchmarks.bench_checkpointing [--batch 8 --seq 1024 --d-model 128 --layers 4] [--device cuda] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import ssmgraph
from benchmarks.common import in_fresh_process, interleaved, step_peak_mib, write_results
from ssmgraph.train.recompute import Recomputed


def setup(args: dict[str, Any], checkpointing: bool) -> tuple[torch.nn.Module, Any]:
    """The model (seeded: both sides hold the same weights) and a training step closure."""
    torch.manual_seed(0)
    model = ssmgraph.build(
        "gpt", d_model=args["d_model"], layers=args["layers"], heads=args["heads"], vocab=256, max_len=args["seq"]
    ).to(args["device"])
    module = Recomputed(model) if checkpointing else model
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 256, (args["batch"], args["seq"] + 1), generator=g).to(args["device"])

    def step() -> None:
        model.zero_grad(set_to_none=False)  # gradients stay allocated: the peak above them is activations
        logits = module(tokens[:, :-1])
        F.cross_entropy(logits.float().reshape(-1, 256), tokens[:, 1:].reshape(-1)).backward()

    return model, step


def peak_mib(args: dict[str, Any], checkpointing: bool) -> float:
    torch.set_num_threads(args["threads"])
    _, step = setup(args, checkpointing)
    step()  # warm-up: gradients and allocator pools exist
    return step_peak_mib(step, args["device"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None)
    parsed = parser.parse_args()
    args = {k: getattr(parsed, k) for k in ("batch", "seq", "d_model", "layers", "heads", "device")}
    args["threads"] = torch.get_num_threads()

    plain_model, plain = setup(args, False)
    recomputed_model, recomputed = setup(args, True)
    plain(), recomputed()
    for (name, a), b in zip(plain_model.named_parameters(), recomputed_model.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=f"gradient of {name}")
    seconds = interleaved({"plain": plain, "checkpointed": recomputed}, warmup=1, rounds=parsed.rounds)
    memory = {name: in_fresh_process(peak_mib, args, flag) for name, flag in (("plain", False), ("checkpointed", True))}
    row = {
        "batch x seq": f"{args['batch']} x {args['seq']}",
        "d_model x layers": f"{args['d_model']} x {args['layers']}",
        "plain peak MiB": memory["plain"],
        "checkpointed peak MiB": memory["checkpointed"],
        "memory saved %": 100 * (1 - memory["checkpointed"] / memory["plain"]) if memory["plain"] > 0 else float("nan"),
        "plain step s": seconds["plain"],
        "checkpointed step s": seconds["checkpointed"],
        "time added %": 100 * (seconds["checkpointed"] / seconds["plain"] - 1),
    }
    write_results("checkpointing" + ("_cuda" if args["device"] == "cuda" else ""), [row], parsed.out)


if __name__ == "__main__":
    main()
