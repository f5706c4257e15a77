"""ssmgraph against Hugging Face transformers: the same GPT-2, Llama, Mamba and Mamba-2, in one run.

Each family is built by transformers from a config (width 256, 4 layers, vocabulary 256;
nothing is downloaded), saved, and imported with ``ssmgraph import hf``, so both sides run
the very same weights; their logits are checked equal before anything is timed. Then, timed
in alternation (median of the rounds):

- training: forward + cross-entropy + backward, tokens/s, batch B at each length;
- forward: no-grad forward (no KV cache), tokens/s;
- peak memory: the growth of the resident set (CPU; peak allocated on CUDA) during one
  training step, each measured in a fresh process so that no earlier step's high-water mark
  hides it;
- generation: greedy decoding with each library's own ``generate``, batch 1. The time per
  new token is (time for 1 + n tokens − time for 1 token) / n, so the prompt's prefill
  cancels out; measured after a short and a long prompt to show whether decoding cost grows
  with the context (it must not for the state-space model).

With ``--compile``, both models are also timed under ``torch.compile``, in the same rounds as
their eager selves (training and forward; no memory or generation).

Transformers' Mamba-2 runs its chunked torch path (chunk_size 256, its default); the import keeps
that value for the export but computes with ``mix.mamba2``'s own default chunk (64), which
gives the same logits. Transformers' Mamba on CPU runs its sequential "slow path", so its training at length 1024
takes minutes per step; it is timed at the shorter lengths only unless ``--full``.

    python -m benchmarks.bench_hf [--families gpt2,llama,mamba,mamba2] [--lengths 256,1024] [--compile] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

import ssmgraph
from benchmarks.common import environment, in_fresh_process, interleaved, step_peak_mib, write_results
from ssmgraph.interop.hf import import_hf

WIDTH, LAYERS, VOCAB, HEADS = 256, 4, 256, 4
SLOW_HF_TRAINING = {"mamba": 256}
"""The longest length at which transformers' CPU slow path is timed in training without --full."""


def hf_config(family: str, max_len: int) -> Any:
    import transformers

    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=VOCAB,
            n_positions=max_len,
            n_embd=WIDTH,
            n_layer=LAYERS,
            n_head=HEADS,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
    if family == "llama":
        return transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=WIDTH,
            intermediate_size=688,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=HEADS,
            max_position_embeddings=max_len,
        )
    if family == "mamba":
        return transformers.MambaConfig(vocab_size=VOCAB, hidden_size=WIDTH, state_size=16, num_hidden_layers=LAYERS)
    if family == "mamba2":  # transformers' defaults but the sizes: head_dim 64, chunk_size 256, its torch path on CPU
        heads = 2 * WIDTH // 64
        return transformers.Mamba2Config(
            vocab_size=VOCAB, hidden_size=WIDTH, num_heads=heads, head_dim=64, state_size=64, n_groups=1, num_hidden_layers=LAYERS
        )
    raise SystemExit(f"unknown family {family!r}: choose from gpt2, llama, mamba, mamba2")


def build_pair(family: str, max_len: int, workdir: Path, device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(transformers' model, ssmgraph's import of it), same weights, checked equal."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    attention = {} if family.startswith("mamba") else {"attn_implementation": "sdpa"}  # transformers' fastest CPU attention
    theirs = transformers.AutoModelForCausalLM.from_config(hf_config(family, max_len), **attention)
    theirs.save_pretrained(workdir / family)
    ours = ssmgraph.load(import_hf(workdir / family, workdir / f"{family}-ssmgraph"))
    theirs, ours = theirs.to(device).eval(), ours.to(device).eval()
    tokens = torch.randint(0, VOCAB, (2, min(64, max_len)), device=device)
    with torch.no_grad():
        diff = (theirs(tokens).logits - ours(tokens)).abs().max().item()
    if diff > 1e-4:
        raise SystemExit(
            f"{family}: ssmgraph's logits differ from transformers' by {diff:.2e}; not benchmarking different models"
        )
    return theirs, ours


def is_hf(model: torch.nn.Module) -> bool:
    """transformers' model (also under torch.compile, which forwards attributes)?"""
    return hasattr(model, "generation_config")


def logits_of(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return model(tokens, use_cache=False).logits if is_hf(model) else model(tokens)


def training_step(model: torch.nn.Module, tokens: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        model.zero_grad(set_to_none=True)
        logits = logits_of(model, tokens[:, :-1])
        F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1)).backward()

    return run


def forward_pass(model: torch.nn.Module, tokens: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            logits_of(model, tokens)

    return run


def generate(model: torch.nn.Module, prompt: torch.Tensor, new: int) -> None:
    with torch.no_grad():
        if is_hf(model):
            model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        else:
            model.generate(prompt, new, temperature=0)


def decode_ms_per_token(models: dict[str, torch.nn.Module], context: int, new: int, rounds: int, device: str) -> dict[str, float]:
    """Milliseconds per generated token after a ``context``-token prompt, prefill cancelled out."""
    prompt = torch.randint(0, VOCAB, (1, context), device=device)
    calls: dict[str, Callable[[], None]] = {}
    for name, model in models.items():
        calls[f"{name}:1"] = lambda m=model: generate(m, prompt, 1)
        calls[f"{name}:n"] = lambda m=model: generate(m, prompt, 1 + new)
    times = interleaved(calls, warmup=1, rounds=rounds)
    return {name: 1000 * (times[f"{name}:n"] - times[f"{name}:1"]) / new for name in models}


# ---- peak memory, one fresh process per measurement ------------------------------------------------
def _memory_worker(family: str, side: str, length: int, batch: int, max_len: int, device: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        theirs, ours = build_pair(family, max_len, Path(tmp), device)
    model = (ours if side == "ssmgraph" else theirs).train()
    del theirs, ours
    tokens = torch.randint(0, VOCAB, (batch, length + 1), device=device)
    return step_peak_mib(training_step(model, tokens), device)


# ---- one family -------------------------------------------------------------------------------------
def bench_family(family: str, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    max_len = max(args.lengths) + args.context_long + args.new_tokens + 2
    theirs, ours = build_pair(family, max_len, workdir, args.device)
    models = {"ssmgraph": ours, "transformers": theirs}
    if args.compile:  # the eager models are timed beside their compiled selves, in the same rounds
        models |= {"ssmgraph compiled": torch.compile(ours), "transformers compiled": torch.compile(theirs)}
    rows = []
    for length in args.lengths:
        tokens = torch.randint(0, VOCAB, (args.batch, length + 1), device=args.device)
        row: dict[str, Any] = {"model": family, "length": length}
        slow = not args.full and length > SLOW_HF_TRAINING.get(family, length)
        timed = {name: m for name, m in models.items() if not (slow and name.startswith("transformers"))}
        train_calls = {name: training_step(m.train(), tokens) for name, m in timed.items()}
        rounds = 1 if family in SLOW_HF_TRAINING and "transformers" in train_calls else args.rounds
        train = interleaved(train_calls, warmup=1, rounds=rounds)
        fwd = interleaved({name: forward_pass(m.eval(), tokens) for name, m in models.items()}, warmup=1, rounds=args.rounds)
        for mode, timings, tokens_per_call in (("train", train, args.batch * length), ("fwd", fwd, args.batch * (length + 1))):
            for name in models:
                row[f"{name} {mode} tok/s"] = round(tokens_per_call / timings[name]) if name in timings else None
            for suffix in ("", " compiled") if args.compile else ("",):
                ratio = f"{mode} ×{suffix}"
                theirs_s, ours_s = timings.get("transformers" + suffix), timings["ssmgraph" + suffix]
                row[ratio] = round(theirs_s / ours_s, 2) if theirs_s is not None else None
        if not args.compile and not args.no_memory:
            for name in train_calls:  # not where transformers' training is skipped as too slow
                row[f"{name} peak MiB"] = round(
                    in_fresh_process(_memory_worker, family, name, length, args.batch, max_len, args.device), 1
                )
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not args.compile:
        for model in models.values():
            model.eval()
        for context in (args.context_short, args.context_long):
            ms = decode_ms_per_token(models, context, args.new_tokens, args.gen_rounds, args.device)
            row = {"model": family, "context": context}
            for name in models:
                row[f"{name} ms/token"] = round(ms[name], 2)
                row[f"{name} gen tok/s"] = round(1000 / ms[name])
            row["gen ×"] = round(ms["transformers"] / ms["ssmgraph"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default="gpt2,llama,mamba,mamba2")
    parser.add_argument("--lengths", default="256,1024", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--gen-rounds", type=int, default=7)
    parser.add_argument("--context-short", type=int, default=32)
    parser.add_argument("--context-long", type=int, default=1024)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time both models under torch.compile, beside their eager selves (training and forward)",
    )
    parser.add_argument("--full", action="store_true", help="also time transformers' slow CPU Mamba training at every length")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-process peak-memory measurements")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            rows += bench_family(family, args, Path(tmp))
    print(f"{time.perf_counter() - started:.0f} s, {environment()}")
    name = "hf" + ("_compile" if args.compile else "") + ("_cuda" if args.device == "cuda" else "")
    for kind in ("length", "context"):
        part = [r for r in rows if kind in r]
        write_results(f"{name}_{'speed' if kind == 'length' else 'generation'}", part, args.out)


if __name__ == "__main__":
    main()
