"""Hugging Face interop, the Llama-layout families: Llama with scaled RoPE (linear, llama3, yarn),
Mistral (sliding window), Qwen2 (q/k/v biases) and Qwen3 (q/k norms, own head_dim). Small random
transformers models (nothing downloaded), imported and exported back, must give transformers'
own logits (fp32, max abs diff <= 1e-4) on sequences longer than the RoPE's original context
and the sliding window; the refused settings are located E601 errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hf_models import TOL, VOCAB, hf_model, max_diff, tokens, transformers

import ssmgraph
from ssmgraph.blocks.attention import ATTENTION
from ssmgraph.blocks.rope import Rotary
from ssmgraph.interop import HFConfigError, HFExportError, export_hf, import_hf
from ssmgraph.interop.hf.llama import Llama
from ssmgraph.registry.specs import TensorType

SEQ = 24  # longer than every original context and window below
TOKEN_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
SMALL = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 48, "num_hidden_layers": 2, "max_position_embeddings": 64}
ROPES = {
    "linear": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 4.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
        "rope_theta": 10000.0,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 100.0},
    "yarn-mscale": {
        "rope_type": "yarn",
        "factor": 3.0,
        "original_max_position_embeddings": 8,
        "rope_theta": 100.0,
        "beta_fast": 8.0,
        "truncate": False,
        "mscale": 1.0,
        "mscale_all_dim": 0.5,
    },
}


def configs() -> dict[str, Any]:
    """One small config per family and variant (head_dim 16 so that llama3 and yarn blend some frequencies)."""
    found = {
        f"llama-{name}": transformers.LlamaConfig(**SMALL, num_attention_heads=4, num_key_value_heads=2, rope_parameters=rope)
        for name, rope in ROPES.items()
    }
    return {
        **found,
        "mistral": transformers.MistralConfig(
            **SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=12, sliding_window=5, **TOKEN_IDS
        ),
        "mistral-no-window": transformers.MistralConfig(
            **SMALL, num_attention_heads=4, num_key_value_heads=4, sliding_window=None
        ),
        "qwen2": transformers.Qwen2Config(**SMALL, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
        "qwen2-yarn": transformers.Qwen2Config(
            **SMALL, num_attention_heads=2, num_key_value_heads=1, rope_parameters=ROPES["yarn"], **TOKEN_IDS
        ),
        "qwen3": transformers.Qwen3Config(**SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=12, **TOKEN_IDS),
        "qwen3-bias": transformers.Qwen3Config(
            **SMALL,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=8,
            attention_bias=True,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        ),
    }


FAMILIES = list(configs())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path, Path]]:
    """name -> (transformers model, its save_pretrained directory, the imported run)."""
    root = tmp_path_factory.mktemp("hf-families")
    found = {}
    for name, config in configs().items():
        model = hf_model(config)
        model.save_pretrained(root / name)
        found[name] = (model, root / name, import_hf(root / name, root / f"{name}-run"))
    return found


@pytest.mark.parametrize("family", FAMILIES)
def test_import_and_export_give_transformers_logits(checkpoints: dict[str, Any], family: str, tmp_path: Path) -> None:
    hf, source, run = checkpoints[family]
    x = tokens(length=SEQ)
    diff = max_diff(ssmgraph.load(run).eval(), hf, x)
    assert diff <= TOL, f"{family}: import, max abs logit difference {diff:.2e}"
    out = export_hf(run, tmp_path / "hf")
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(back) is type(hf), "exported as its own family"
    diff = max_diff(back, hf, x)
    assert diff <= TOL, f"{family}: export, max abs logit difference {diff:.2e}"
    original, exported = (json.loads((d / "config.json").read_text()) for d in (source, out))
    kept = [k for k in ("model_type", "max_position_embeddings", "tie_word_embeddings", "head_dim", *TOKEN_IDS) if k in original]
    assert {k: exported[k] for k in kept} == {k: original[k] for k in kept}
    rope = {k: v for k, v in original["rope_parameters"].items() if k not in ("mscale", "mscale_all_dim")}
    assert exported["rope_parameters"].items() >= rope.items(), "the RoPE settings come back"
    if "sliding_window" in original:
        assert exported["sliding_window"] == original["sliding_window"]


def test_the_scaled_rope_and_window_matter() -> None:
    """The configs above test something: transformers' logits change without the scaling or the window."""
    x = tokens(length=SEQ)
    for name, changed in [("llama-llama3", {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}})]:
        config = configs()[name]
        plain = hf_model(type(config)(**{**config.to_dict(), **changed}))
        assert max_diff(plain, hf_model(config), x) > 1e-2
    mistral = configs()["mistral"]
    unwindowed = type(mistral)(**{**mistral.to_dict(), "sliding_window": None})
    assert max_diff(hf_model(unwindowed), hf_model(mistral), x) > 1e-2


@pytest.mark.parametrize("family", ["mistral", "qwen3"])
def test_greedy_generation_matches_transformers(checkpoints: dict[str, Any], family: str) -> None:
    """Through the KV cache: 12 tokens, more than the window of 5."""
    hf, _, run = checkpoints[family]
    prompt = tokens(batch=1, length=5)
    ours = ssmgraph.load(run).eval().generate(prompt, 7, temperature=0)
    theirs = hf.generate(prompt, max_new_tokens=7, do_sample=False)
    assert ours.tolist() == theirs.tolist()


@pytest.mark.parametrize("name", list(ROPES))
def test_rope_frequencies_equal_transformers(name: str) -> None:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = configs()[f"llama-{name}"]
    want, magnitude = ROPE_INIT_FUNCTIONS[config.rope_parameters["rope_type"]](config, "cpu")
    run = import_hf_args(config)
    options = {
        k.removeprefix("rope_"): v for k, v in run.items() if k.startswith("rope_") and k not in ("rope_base", "rope_scaling")
    }
    rotary = Rotary(16, run["rope_base"], scaling=run["rope_scaling"], **options)
    torch.testing.assert_close(rotary.inv_freq, want, rtol=1e-6, atol=0)
    assert rotary.magnitude == pytest.approx(magnitude)


def import_hf_args(config: Any) -> dict[str, Any]:
    """mix.attention's arguments that an import of ``config`` writes."""
    from ssmgraph.interop.hf.checkpoint import HFConfig
    from ssmgraph.interop.hf.rope import read_rope

    return read_rope(HFConfig(config.to_dict(), Path("config.json")), config.max_position_embeddings)


def test_rope_table_keeps_its_precision_through_casts() -> None:
    block = ATTENTION.factory(
        [TensorType(("batch", "seq", 32))],
        **{**ATTENTION.defaults(), "rope": True, "rope_scaling": "llama3", "rope_factor": 8.0, "rope_original_len": 16},
    )
    exact = block.rotary._exact
    assert block.to(torch.bfloat16).rotary.inv_freq.dtype == torch.float32
    assert torch.equal(block.rotary.inv_freq, exact.float()), "not the bf16 rounding of the fp32 table"
    assert torch.equal(block.double().rotary.inv_freq, exact)
    assert "inv_freq" not in "".join(block.state_dict())


def test_window_with_cache_and_padding_equals_one_pass() -> None:
    """Chunked forward and step loops see the same last `window` tokens as one causal pass."""
    torch.manual_seed(0)
    args = {**ATTENTION.defaults(), "heads": 4, "kv_heads": 2, "rope": True, "window": 3}
    block = ATTENTION.factory([TensorType(("batch", "seq", 16))], **args).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    full = block(x)
    y1, state = block(x[:, :4], return_state=True)
    y2, state = block(x[:, 4:6], state=state, return_state=True)
    steps = []
    for t in range(6, 9):
        y_t, state = block.step(x[:, t], state)
        steps.append(y_t[:, None])
    torch.testing.assert_close(torch.cat([y1, y2, *steps], 1), full, rtol=1e-10, atol=1e-12)
    # right padding: a sequence padded after 2 tokens continues with its window counted in tokens
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    _, state = block(x[:, :4], mask=mask, return_state=True)
    y_t, _ = block.step(x[:, 4], state)
    alone = block(torch.cat([x[1:, :2], x[1:, 4:5]], 1))
    torch.testing.assert_close(y_t[1], alone[0, -1], rtol=1e-10, atol=1e-12)


def test_families_are_told_apart_on_export(checkpoints: dict[str, Any], tmp_path: Path) -> None:
    """A Mistral without window has Llama's layout: it exports as the family it was imported from;
    a model built in ssmgraph with a window exports as Mistral."""
    out = export_hf(checkpoints["mistral-no-window"][2], tmp_path / "imported")
    assert json.loads((out / "config.json").read_text())["model_type"] == "mistral"
    blueprint = Llama(VOCAB, 32, 2, 4, 2, None, 40, "silu", 1e-6, {"rope": True, "rope_base": 1e4}, False, False).blueprint()
    blueprint["nodes"]["blocks"]["body"]["nodes"]["mix"]["args"]["window"] = 4
    model = ssmgraph.build(blueprint)
    ssmgraph.save(model, tmp_path / "built")
    out = export_hf(tmp_path / "built", tmp_path / "built-hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["MistralForCausalLM"]


def _refused(checkpoints: dict[str, Any], tmp_path: Path, family: str, **changes: Any) -> str:
    source = checkpoints[family][1]
    directory = tmp_path / "ckpt"
    directory.mkdir()
    config = {**json.loads((source / "config.json").read_text()), **changes}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "model.safetensors").symlink_to(source / "model.safetensors")
    with pytest.raises(HFConfigError) as info:
        import_hf(directory, tmp_path / "run")
    assert HFConfigError.code == "E601" and str(directory / "config.json") in str(info.value)
    return str(info.value)


@pytest.mark.parametrize(
    ("family", "changes", "expected"),
    [
        ("llama-linear", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, "'rope_parameters.rope_type': 'dynamic'"),
        ("llama-linear", {"rope_parameters": {"rope_type": "longrope", "factor": 2.0}}, "'longrope' is not supported"),
        ("llama-linear", {"rope_parameters": {"rope_type": "linear"}}, "'rope_parameters.factor': missing"),
        ("llama-yarn", {"rope_parameters": {**ROPES["yarn"], "truncate": "yes"}}, "'rope_parameters.truncate'"),
        (
            "llama-linear",
            {"rope_parameters": None, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
            "'rope_scaling.rope_type'",
        ),
        ("qwen2", {"use_sliding_window": True, "sliding_window": 4}, "'use_sliding_window': true is not supported"),
        ("qwen3", {"layer_types": ["full_attention", "sliding_attention"]}, "'layer_types'"),
        ("mistral", {"sliding_window": 0}, "'sliding_window': must be at least 1"),
        ("llama-llama3", {"rope_parameters": {**ROPES["llama3"], "high_freq_factor": 1.0}}, "'rope_parameters.high_freq_factor'"),
        ("llama-yarn", {"rope_parameters": {**ROPES["yarn"], "mscale": "1", "mscale_all_dim": 1}}, "'rope_parameters.mscale'"),
        ("llama-yarn", {"partial_rotary_factor": 0.5}, "'partial_rotary_factor': 0.5 is not supported"),
    ],
)
def test_refused_settings_are_located_e601(
    checkpoints: dict[str, Any], tmp_path: Path, family: str, changes: dict[str, Any], expected: str
) -> None:
    assert expected in _refused(checkpoints, tmp_path, family, **changes)


def test_dynamic_rope_refusal_says_why_and_what_to_do(checkpoints: dict[str, Any], tmp_path: Path) -> None:
    message = _refused(checkpoints, tmp_path, "llama-linear", rope_parameters={"rope_type": "dynamic", "factor": 2.0})
    assert "longest sequence the model object has seen" in message and "'default'" in message


def test_a_layout_of_no_family_is_e603(tmp_path: Path) -> None:
    """A window and q/k norms together: no family has both; the message names the first difference."""
    blueprint = Llama(VOCAB, 32, 2, 4, 2, None, 40, "silu", 1e-6, {"rope": True, "rope_base": 1e4}, False, False).blueprint()
    blueprint["nodes"]["blocks"]["body"]["nodes"]["mix"]["args"].update(window=4, qk_norm=True)
    ssmgraph.save(ssmgraph.build(blueprint), tmp_path / "built")
    with pytest.raises(HFExportError, match=r"node 'blocks\.0\.mix' has window=4, not None, unlike the Llama layout"):
        export_hf(tmp_path / "built", tmp_path / "hf")
