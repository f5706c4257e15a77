"""Every family ssmgraph converts, merged by a mergekit config through `ssmgraph merge` and through
mergekit's own `run_merge`, tensor for tensor (fp32, ≤ 1e-6).

Tiny random checkpoints (a base and two fine-tunes of it) built from transformers' config classes;
nothing is downloaded. TIES over three models or slerp over two, so both per-tensor paths (top-k
trimming with sign election; interpolation on the sphere with its gradient over the layers) run on
each family's own tensor names (fused qkv_proj, gate_up_proj, c_attn, sandwich norms, Mamba's mixer).
mergekit 0.1.5 merges every family listed here (from its architecture JSON files; Mamba-2, which has
none, through its inferred architecture), so none is skipped; GPT-NeoX and Llama with default RoPE are
in test_mergekit_dialect.py and test_hf_neox.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from ssmgraph.cli.main import app

transformers = pytest.importorskip("transformers")
mergekit = pytest.importorskip("mergekit")

TOL = 1e-6
NO_TOKENS = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
SMALL = {"vocab_size": 48, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3, **NO_TOKENS}
TIES = {
    "merge_method": "ties",
    "base_model": "base",
    "models": [
        {"model": "a", "parameters": {"density": 0.5, "weight": 0.7}},
        {"model": "b", "parameters": {"density": 0.3, "weight": [0.2, 0.9]}},
    ],
    "parameters": {"normalize": True},
    "dtype": "float32",
}
SLERP = {
    "merge_method": "slerp",
    "base_model": "base",
    "slices": [{"sources": [{"model": "base", "layer_range": [0, 3]}, {"model": "a", "layer_range": [0, 3]}]}],
    "parameters": {"t": [{"filter": "self_attn", "value": [0.1, 0.8]}, {"value": 0.4}]},
    "dtype": "float32",
}


def _configs() -> dict[str, tuple[Any, dict[str, Any]]]:
    """family -> (its transformers config, the mergekit config that merges it)."""
    t = transformers
    return {
        "mistral": (t.MistralConfig(**SMALL, num_attention_heads=4, num_key_value_heads=2, sliding_window=8), TIES),
        "qwen2": (t.Qwen2Config(**SMALL, num_attention_heads=4, num_key_value_heads=2), SLERP),
        "qwen3": (t.Qwen3Config(**SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=8), TIES),
        "gemma": (t.GemmaConfig(**SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=8), TIES),
        "gemma2": (
            t.Gemma2Config(**SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4),
            SLERP,
        ),
        "phi3": (t.Phi3Config(**SMALL, num_attention_heads=4, num_key_value_heads=2), TIES),
        "llama3-rope": (
            t.LlamaConfig(
                **SMALL,
                num_attention_heads=4,
                rope_parameters={
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                },
            ),
            SLERP,
        ),
        "gpt2": (t.GPT2Config(vocab_size=48, n_positions=16, n_embd=32, n_layer=3, n_head=4, **NO_TOKENS), TIES),
        "mamba": (
            t.MambaConfig(vocab_size=48, hidden_size=32, state_size=8, num_hidden_layers=3, time_step_rank=4, **NO_TOKENS),
            TIES,
        ),
        "mamba2": (
            t.Mamba2Config(
                vocab_size=48, hidden_size=16, num_hidden_layers=3, num_heads=8, head_dim=4, state_size=6, n_groups=2, **NO_TOKENS
            ),
            TIES,
        ),
    }


def _checkpoints(root: Path, config: Any) -> type:
    """base, and a and b: the base plus noise, as save_pretrained writes them; the model class."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for i, name in enumerate(("base", "a", "b")):
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for key, tensor in model.state_dict().items():
                tensor.copy_(start[key] + (0.02 * torch.randn(tensor.shape, generator=gen) if i else 0))
        model.save_pretrained(root / name)
    return type(model)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def _theirs(root: Path, config: dict[str, Any], out: str) -> Path:
    from mergekit.config import MergeConfiguration
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import MergeOptions, run_merge

    cwd = os.getcwd()
    os.chdir(root)  # mergekit reads model paths from the current folder
    try:
        LoaderCache.loaders.clear()  # mergekit caches loaders by (relative) model path across runs
        merge = MergeConfiguration.model_validate(config)
        run_merge(
            merge,
            str(root / out),
            MergeOptions(cuda=False, copy_tokenizer=False, write_model_card=False, quiet=True, random_seed=0),
        )
    finally:
        os.chdir(cwd)
    return root / out


@pytest.mark.parametrize("family", list(_configs()))
def test_every_family_merges_as_mergekit(family: str, tmp_path: Path) -> None:
    config, merge = _configs()[family]
    cls = _checkpoints(tmp_path, config)
    (tmp_path / "merge.yml").write_text(yaml.safe_dump(merge), encoding="utf-8")
    result = CliRunner().invoke(app, ["merge", str(tmp_path / "merge.yml"), "--out", str(tmp_path / "ours")])
    assert result.exit_code == 0, result.output
    ours, theirs = _tensors(tmp_path / "ours"), _tensors(_theirs(tmp_path, merge, "theirs"))
    assert ours.keys() == theirs.keys()
    base = _tensors(tmp_path / "base")
    moved = 0
    for key, want in theirs.items():
        torch.testing.assert_close(ours[key], want, rtol=0, atol=TOL, msg=lambda m, key=key: f"{key}: {m}")
        moved += not torch.equal(want, base[key])
    assert moved > len(theirs) // 2  # the merge changed the weights: the comparison is not of two copies
    assert type(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours")) is cls
