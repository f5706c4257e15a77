"""Fine-tune Hugging Face checkpoints with `ssmgraph train --init` and export them back (CPU, minutes).

    python -m benchmarks.finetune_results [--only gpt2,mamba,gpt2-lora] [--steps 300] [--out benchmarks/results]

Each experiment builds a small checkpoint with random weights from transformers' config classes
(nothing is downloaded) and a byte-level BPE tokenizer trained on the bundled English text, then
trains it through the same code path as `ssmgraph train --init HF_FOLDER --task text -t
tokenizer=HF_FOLDER` (the checkpoint is converted in memory). It reports the held-out loss of the
source and of the fine-tuned model on the text task's validation documents, exports the run
(`ssmgraph export hf`) and compares the logits transformers computes from the export with
ssmgraph's on held-out windows. `gpt2-lora` trains only LoRA adapters (`lora: {r: 8, alpha: 16}`)
and exports the merged model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import ssmgraph
from benchmarks.common import write_results
from ssmgraph.interop.hf import export_hf, read_hf
from ssmgraph.train.config import TrainConfig
from ssmgraph.train.fitting import make_task
from ssmgraph.train.metrics import read_metrics
from ssmgraph.train.tasks.text import BUNDLED
from ssmgraph.train.trainer import evaluate, train

VOCAB = 512
SEQ_LEN = 64
EOD = "<|endoftext|>"


def tokenizer_files(folder: Path) -> None:
    """A byte-level BPE tokenizer (tokenizer.json + tokenizer_config.json) trained on the bundled English text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=[EOD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train([str(BUNDLED["en"])], trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOD}))


def checkpoint(family: str, folder: Path) -> int:
    """A random transformers model of ``family`` saved to ``folder``; its parameter count."""
    import transformers

    torch.manual_seed(0)
    tokens = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}  # the tokenizer's EOD (its first token)
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=SEQ_LEN, n_embd=96, n_layer=3, n_head=4, **tokens)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.MambaConfig(vocab_size=VOCAB, hidden_size=96, state_size=16, num_hidden_layers=3, **tokens)
        model = transformers.MambaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer_files(folder)
    return sum(p.numel() for p in model.parameters())


def run(name: str, root: Path, steps: int, eval_size: int = 256) -> dict[str, Any]:
    family = name.split("-")[0]
    source = root / f"{name}-hf"
    params = checkpoint(family, source)
    lora = {"r": 8, "alpha": 16} if name.endswith("lora") else {}
    options = {"tokenizer": str(source), "seq_len": SEQ_LEN}
    config = TrainConfig(
        task="text",
        task_options=options,
        steps=steps,
        batch_size=16,
        lr=3e-3 if not lora else 1e-2,
        warmup_steps=steps // 10,
        eval_interval=max(1, steps // 4),
        eval_size=eval_size,
        checkpoint_interval=steps,
        lora=lora,
    )
    task = make_task("text", options)
    before = evaluate(read_hf(source), task, config.batch_size, config.eval_size, "test")
    tic = time.perf_counter()
    train(None, root / name, config, init=source, progress=False)
    seconds = time.perf_counter() - tic
    evals = [r for r in read_metrics(root / name) if r["split"] == "eval"]
    exported = export_hf(root / name, root / f"{name}-export")
    return {
        "experiment": name,
        "parameters": params,
        "steps": steps,
        "seconds": round(seconds, 1),
        "held_out_loss_before": round(before["loss"], 4),
        "held_out_loss_after": round(evals[-1]["loss"], 4),
        "held_out_losses": [round(r["loss"], 4) for r in evals],
        "export_max_abs_logit_diff": logit_difference(root / name, exported, task),
    }


@torch.no_grad()
def logit_difference(run_dir: Path, exported: Path, task: Any) -> float:
    """The largest difference between transformers' logits from the export and ssmgraph's, on held-out windows."""
    import transformers

    ours = ssmgraph.load(run_dir).eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    batch = next(iter(task.eval_batches(4, "test", 4)))
    return float((theirs(batch.inputs).logits - ours(batch.inputs)).abs().max())


EXPERIMENTS = ("gpt2", "mamba", "gpt2-lora")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help=f"comma-separated experiments ({', '.join(EXPERIMENTS)})")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-size", type=int, default=256, help="held-out windows per evaluation")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    chosen = [e for e in EXPERIMENTS if not args.only or e in args.only.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            row = run(name, Path(tmp), args.steps, args.eval_size)
            print(json.dumps(row), flush=True)
            rows.append(row)
    write_results("finetune_results", rows, args.out)


if __name__ == "__main__":
    main()
