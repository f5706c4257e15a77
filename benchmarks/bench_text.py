"""The ``text`` task against the ``bytes`` task, in one run.

1. Training speed: the same ≈1M-parameter GPT (d_model 128, 4 layers) trained on the bundled
   English text by the ``bytes`` task, by ``text`` with a byte-level BPE tokenizer trained here
   on that text (``--vocab`` ids), and by ``text`` without a tokenizer (bytes plus an
   end-of-document id: the same model as ``bytes`` but for one more id, so its ratio isolates
   the task's data path). A step draws its batch from the task with a generator, as the trainer
   does, and runs forward, backward and AdamW; steps of the candidates alternate and the
   median is kept. Goal: text's tokens/s within 5% of bytes'.
2. Start-up: building the task (listing the files, hashing, tokenizing or mapping the cache,
   splitting) the first time (tokenizing; empty cache) and the second time (the cache mapped),
   on the bundled text and on a generated corpus of ``--corpus-mb`` MB of JSON lines (the bundled
   paragraphs shuffled into documents). Goal: the second start-up under 2 s.

Nothing is downloaded: the tokenizer is trained on the bundled text, the caches live in a
temporary folder.

    python -m benchmarks.bench_text [--batch 16 --seq 256 --vocab 512 --corpus-mb 20 --rounds 7 --threads N] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import ssmgraph
from benchmarks.common import interleaved, write_results
from ssmgraph.train.fitting import make_task
from ssmgraph.train.tasks import token_cache
from ssmgraph.train.tasks.base import Task
from ssmgraph.train.tasks.text import BUNDLED


def train_tokenizer(folder: Path, vocab: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train([str(BUNDLED["en"])], trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def generate_corpus(folder: Path, megabytes: float, files: int = 20) -> Path:
    """JSON lines files of documents made of the bundled paragraphs, shuffled."""
    paragraphs = [p for p in BUNDLED["en"].read_text(encoding="utf-8").split("\n\n") if p.strip()]
    rng = random.Random(0)
    per_file = int(megabytes * 1e6 / files)
    folder.mkdir(parents=True)
    for index in range(files):
        lines, size = [], 0
        while size < per_file:
            document = "\n\n".join(rng.sample(paragraphs, rng.randint(2, 12)))
            lines.append(json.dumps({"text": document}))
            size += len(lines[-1]) + 1
        (folder / f"part_{index:03d}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def timed_build(options: dict[str, object]) -> tuple[float, Task]:
    start = time.perf_counter()
    task = make_task("text", options)
    return time.perf_counter() - start, task


def step_fn(task: Task, args: argparse.Namespace) -> Callable[[], None]:
    torch.manual_seed(0)
    model = ssmgraph.build("gpt", vocab=task.vocab_size, d_model=args.d_model, layers=args.layers, heads=4, max_len=args.seq)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)

    def step() -> None:
        batch = task.sample(args.batch, generator)
        logits = model(batch.inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step.params = sum(p.numel() for p in model.parameters())  # type: ignore[attr-defined]
    return step


def sample_seconds(task: Task, batch: int, repeats: int = 200) -> float:
    generator = torch.Generator().manual_seed(2)
    start = time.perf_counter()
    for _ in range(repeats):
        task.sample(batch, generator)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--corpus-mb", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ[token_cache.ENV] = str(root / "cache")
        tokenizer = train_tokenizer(root, args.vocab)
        corpus = generate_corpus(root / "corpus", args.corpus_mb)

        rows = []
        for name, options in (
            ("bundled text, BPE", {"tokenizer": str(tokenizer), "seq_len": args.seq}),
            (f"{args.corpus_mb:g} MB JSON lines, BPE", {"path": str(corpus), "tokenizer": str(tokenizer), "seq_len": args.seq}),
            (f"{args.corpus_mb:g} MB JSON lines, bytes", {"path": str(corpus), "seq_len": args.seq}),
        ):
            first, task = timed_build(options)
            second, again = timed_build(options)
            assert task.store.built and not again.store.built
            rows.append(
                {
                    "data": name,
                    "tokens": int(task.store.ends[-1]),
                    "documents": int(task.store.ends.size),
                    "first start-up s": first,
                    "second start-up s": second,
                }
            )
        write_results("text_startup", rows, args.out)
        print()

        tasks = {
            "bytes": make_task("bytes", {"seq_len": args.seq}),
            f"text (BPE {args.vocab})": make_task("text", {"tokenizer": str(tokenizer), "seq_len": args.seq}),
            "text (bytes + eod)": make_task("text", {"seq_len": args.seq}),
        }
        steps = {name: step_fn(task, args) for name, task in tasks.items()}
        medians = interleaved(steps, warmup=2, rounds=args.rounds)
        base = medians["bytes"]
        rows = []
        for name, task in tasks.items():
            tokens_per_s = args.batch * args.seq / medians[name]
            per_token = task.bytes_per_token("valid") or 1.0
            rows.append(
                {
                    "task": name,
                    "params": steps[name].params,  # type: ignore[attr-defined]
                    "vocab": task.vocab_size,
                    "step ms": medians[name] * 1e3,
                    "tokens/s": tokens_per_s,
                    "tokens/s vs bytes": base / medians[name],
                    "text bytes/s": tokens_per_s * per_token,
                    "sample ms": sample_seconds(task, args.batch) * 1e3,
                }
            )
        write_results("text_speed", rows, args.out)


if __name__ == "__main__":
    main()
