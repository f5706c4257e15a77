"""Small random transformers models for the Hugging Face interop tests (test_hf_conversion.py,
test_hf_errors.py and the ``checkpoints`` fixture in conftest.py): one config per family and
variant, nothing downloaded, and the logit comparison.

Importing this module skips the importing test module when transformers is not installed.
Imported by basename, like tests/registry/fake_plugins.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

TOL = 1e-4
VOCAB = 61
NO_TOKENS = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}


def configs() -> dict[str, Any]:
    """One small config per family and variant; each switches on options the others leave off."""
    return {
        "gpt2": transformers.GPT2Config(
            vocab_size=VOCAB,
            n_positions=32,
            n_embd=32,
            n_layer=2,
            n_head=4,
            layer_norm_epsilon=1e-4,
            **{**NO_TOKENS, "pad_token_id": 3},
        ),
        "gpt2-untied": transformers.GPT2Config(
            vocab_size=VOCAB,
            n_positions=32,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_inner=48,
            activation_function="relu",
            tie_word_embeddings=False,
            **NO_TOKENS,
        ),
        "llama": transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_theta=500.0,
            rms_norm_eps=1e-5,
            attention_bias=True,
            **NO_TOKENS,
        ),
        "llama-tied": transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=40,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            mlp_bias=True,
            tie_word_embeddings=True,
            **NO_TOKENS,
        ),
        "mamba": transformers.MambaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            state_size=8,
            num_hidden_layers=2,
            conv_kernel=3,
            time_step_rank=4,
            layer_norm_epsilon=1e-4,
            **NO_TOKENS,
        ),
        "mamba-bias": transformers.MambaConfig(
            vocab_size=VOCAB,
            hidden_size=24,
            state_size=4,
            num_hidden_layers=2,
            expand=3,
            use_bias=True,
            use_conv_bias=False,
            tie_word_embeddings=False,
            **NO_TOKENS,
        ),
    }


FAMILIES = list(configs())


def hf_model(config: Any) -> Any:
    """A random model whose weights are all perturbed, so no tensor keeps a trivial init (zero biases, unit norms)."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def tokens(batch: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


def logits(model: Any, x: torch.Tensor) -> torch.Tensor:
    """An ssmgraph model returns the logits; a transformers model, an output holding them."""
    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out)


def max_diff(model: Any, reference: Any, x: torch.Tensor) -> float:
    want = logits(reference, x)
    assert want.abs().max() > 0.5, "logits too small for the comparison to mean anything"
    return (logits(model, x) - want).abs().max().item()
