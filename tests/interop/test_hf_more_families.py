"""Gemma, Gemma 2 and Phi-3 (GPT-NeoX: test_hf_neox.py): import gives transformers' logits, export loads back with from_pretrained
and gives them again (fp32, ≤ 1e-4), and what cannot map is E601 naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import ssmgraph
from ssmgraph.interop import export_hf, import_hf
from ssmgraph.interop.errors import HFConfigError

from hf_models import NO_TOKENS, TOL, VOCAB, hf_model, max_diff, tokens, transformers  # isort: skip

SMALL = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, **NO_TOKENS}


def configs() -> dict[str, Any]:
    return {
        "gemma": transformers.GemmaConfig(**SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=16),
        "gemma-bias-untied": transformers.GemmaConfig(
            **SMALL, num_attention_heads=2, num_key_value_heads=1, head_dim=8, attention_bias=True, tie_word_embeddings=False
        ),
        # Gemma 2: caps small enough to bite, a window shorter than the test's 12 tokens, an odd query scalar
        "gemma2": transformers.Gemma2Config(
            **{**SMALL, "num_hidden_layers": 3},
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=4,
            query_pre_attn_scalar=12,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0,
        ),
        "gemma2-nocap-untied": transformers.Gemma2Config(
            **SMALL,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            sliding_window=3,
            layer_types=["full_attention", "sliding_attention"],
            attn_logit_softcapping=None,
            final_logit_softcapping=None,
            attention_bias=True,
            tie_word_embeddings=False,
            hidden_activation="gelu",
        ),
        "phi3": transformers.Phi3Config(**SMALL, num_attention_heads=4, num_key_value_heads=2),
        "phi3-window-tied": transformers.Phi3Config(
            **SMALL, num_attention_heads=4, sliding_window=5, tie_word_embeddings=True, hidden_act="gelu"
        ),
    }


@pytest.mark.parametrize("name", list(configs()))
def test_round_trip_gives_transformers_logits(name: str, tmp_path: Path) -> None:
    reference = hf_model(configs()[name])
    reference.save_pretrained(tmp_path / "hf")
    run = import_hf(tmp_path / "hf", tmp_path / "run")
    x = tokens()
    assert max_diff(ssmgraph.load(run), reference, x) <= TOL
    export_hf(run, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == reference.config.model_type
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(back) is type(reference)
    assert max_diff(back, reference, x) <= TOL


REFUSED = [
    ("gemma", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ("gemma", {"hidden_act": "relu"}, "hidden_act"),
    ("gemma2", {"layer_types": ["sliding_attention"]}, "layer_types"),
    ("gemma2", {"attn_logit_softcapping": 0}, "attn_logit_softcapping"),
    ("gemma2", {"hidden_activation": "relu"}, "hidden_activation"),
    ("phi3", {"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ("phi3", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, "rope_parameters.rope_type"),
    ("phi3", {"head_dim": 16}, "head_dim"),
]


@pytest.mark.parametrize(("name", "change", "field"), REFUSED)
def test_what_cannot_map_is_e601_naming_the_field(name: str, change: dict[str, Any], field: str, tmp_path: Path) -> None:
    reference = hf_model(configs()[name])
    reference.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(HFConfigError) as caught:
        import_hf(tmp_path / "hf", tmp_path / "run")
    assert caught.value.code == "E601" and repr(field) in str(caught.value)


def test_a_fused_hf_tensor_is_one_merge_part(tmp_path: Path) -> None:
    """Phi-3's qkv_proj is one checkpoint tensor (mergekit merges it whole): no parts; Llama's qkv has three."""
    from ssmgraph.merge.parts import fused_parts

    reference = hf_model(configs()["phi3"])
    reference.save_pretrained(tmp_path / "hf")
    model = ssmgraph.load(import_hf(tmp_path / "hf", tmp_path / "run"))
    assert fused_parts(model) == {}
    llama = transformers.LlamaConfig(**SMALL, num_attention_heads=4, num_key_value_heads=2)
    hf_model(llama).save_pretrained(tmp_path / "llama")
    parts = fused_parts(ssmgraph.load(import_hf(tmp_path / "llama", tmp_path / "llama-run")))
    assert parts["blocks.0.mix.qkv.weight"] == (32, 16, 16)


def test_gemma2_window_caps_and_scale_each_change_the_logits(tmp_path: Path) -> None:
    """The comparison above means something: without the window, a cap or the query scalar, logits differ."""
    config = configs()["gemma2"]
    reference = hf_model(config)
    x = tokens()
    for change in (
        {"sliding_window": 64},
        {"attn_logit_softcapping": None},
        {"final_logit_softcapping": None},
        {"query_pre_attn_scalar": 16},
    ):
        other = transformers.Gemma2Config(**{**config.to_dict(), **change})
        changed = transformers.AutoModelForCausalLM.from_config(other).eval()
        changed.load_state_dict(reference.state_dict())
        assert max_diff(changed, reference, x) > 1e-3, change
    reference.save_pretrained(tmp_path / "hf")
    model = ssmgraph.load(import_hf(tmp_path / "hf", tmp_path / "run"))
    windows = [model.nodes[f"blocks.{i}.mix"].args["window"] for i in range(3)]
    assert windows == [4, None, 4] and model.nodes["head"].args["softcap"] == 3.0
