"""ssmgraph vs mergekit on the same mergekit config: peak memory growth and wall time.

Three random Llama-layout checkpoints (a base and two "fine-tunes", ~100M parameters each by
default, written straight to safetensors) are merged by each tool in its own subprocess, with
the same YAML config: ``python -m ssmgraph merge CONFIG --out DIR`` and mergekit's ``run_merge``.
Memory growth is the subprocess's peak resident memory (VmHWM) minus its resident memory after
imports, before the merge, also given in units of the largest tensor (the embedding).

    python benchmarks/bench_merge.py --small              # a quick run (~10M parameters each)
    python benchmarks/bench_merge.py --methods linear ties
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

RUNNER = {
    "ssmgraph": """
import sys
from pathlib import Path
from ssmgraph.merge.mergekit.dialect import load_mergekit
from ssmgraph.merge.mergekit.output import run_mergekit
config = load_mergekit(sys.argv[1])
def go():
    run_mergekit(config, Path(sys.argv[2]), shard_size="2GB")
""",
    "mergekit": """
import os, sys, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import MergeOptions, run_merge
os.chdir(os.path.dirname(sys.argv[1]))
config = MergeConfiguration.model_validate(yaml.safe_load(open(sys.argv[1])))
def go():
    run_merge(config, sys.argv[2], MergeOptions(cuda=False, write_model_card=False, quiet=True, copy_tokenizer=False, out_shard_size=2 * 10**9))
""",
}
MEASURE = """
import time
def status(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))
before = status("VmRSS")
start = time.perf_counter()
go()
print(time.perf_counter() - start, (status("VmHWM") - before) * 1024)
"""
CONFIGS = {
    "linear": "models:\n  - model: a\n    parameters: {weight: 0.5}\n  - model: b\n    parameters: {weight: 0.5}\nmerge_method: linear\n",
    "ties": (
        "models:\n  - model: a\n    parameters: {weight: 1, density: 0.5}\n  - model: b\n    parameters: {weight: 1, density: 0.5}\n"
        "merge_method: ties\nbase_model: base\n"
    ),
    "slerp": "models:\n  - model: base\n  - model: a\nmerge_method: slerp\nbase_model: base\nparameters: {t: [0, 0.5, 1]}\n",
}


def write_llama(folder: Path, layers: int, hidden: int, inner: int, vocab: int, seed: int) -> int:
    """A random Llama checkpoint (config.json + model.safetensors): its size in bytes."""
    folder.mkdir(parents=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden, "intermediate_size": inner,
        "num_hidden_layers": layers, "num_attention_heads": hidden // 64, "num_key_value_heads": hidden // 64,
        "vocab_size": vocab, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
        "dtype": "float32", "hidden_act": "silu",
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    gen = torch.Generator().manual_seed(seed)
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({f"{p}self_attn.{n}.weight": (hidden, hidden) for n in ("q_proj", "k_proj", "v_proj", "o_proj")})
        shapes.update({f"{p}mlp.gate_proj.weight": (inner, hidden), f"{p}mlp.up_proj.weight": (inner, hidden)})
        shapes.update({f"{p}mlp.down_proj.weight": (hidden, inner), f"{p}input_layernorm.weight": (hidden,)})
        shapes[f"{p}post_attention_layernorm.weight"] = (hidden,)
    tensors = {k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return sum(t.numel() * 4 for t in tensors.values())


def run(tool: str, config: Path, out: Path) -> tuple[float, int]:
    done = subprocess.run(
        [sys.executable, "-c", RUNNER[tool] + MEASURE, str(config), str(out)], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"{tool} failed:\n{done.stderr[-2000:]}")
    seconds, growth = done.stdout.split()[-2:]
    return float(seconds), int(growth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="~10M parameters per model instead of ~100M")
    parser.add_argument("--methods", nargs="+", default=["linear", "ties", "slerp"], choices=sorted(CONFIGS))
    args = parser.parse_args()
    size = (4, 256, 688, 8192) if args.small else (12, 768, 2048, 16000)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        total = sum(write_llama(root / name, *size, seed=i) for i, name in enumerate(("base", "a", "b")))
        largest = size[3] * size[1] * 4  # the embedding (and the head), fp32
        print(f"inputs: 3 Llama checkpoints, {total / 3 / 4e6:.0f}M parameters each, {total / 1e9:.2f} GB in all (fp32)")
        print(f"largest tensor: {largest / 1e6:.1f} MB")
        print(f"{'method':<8} {'tool':<9} {'wall s':>8} {'peak growth MB':>15} {'in tensors':>11}")
        for method in args.methods:
            config = root / f"{method}.yml"
            config.write_text(CONFIGS[method], encoding="utf-8")
            figures = {}
            for tool in ("ssmgraph", "mergekit"):
                figures[tool] = run(tool, config, root / f"{tool}-{method}")
                seconds, growth = figures[tool]
                print(f"{method:<8} {tool:<9} {seconds:>8.2f} {growth / 1e6:>15.0f} {growth / largest:>11.1f}")
            (s_time, s_mem), (m_time, m_mem) = figures["ssmgraph"], figures["mergekit"]
            print(f"{method:<8} {'ratio':<9} {s_time / m_time:>8.2f} {s_mem / max(m_mem, 1):>15.2f}   (ssmgraph / mergekit)")


if __name__ == "__main__":
    main()
