"""GPT-NeoX: import gives transformers' logits (parallel and sequential residual, partial RoPE, the
per-head interleaved query_key_value), export loads back with from_pretrained and gives them again
(fp32, ≤ 1e-4), what cannot map is E601 naming the field, and merges treat query_key_value as one
tensor, as mergekit does (mergekit's own configs through `ssmgraph merge`, and native recipes)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import ssmgraph
from ssmgraph.cli.main import app
from ssmgraph.interop import export_hf, import_hf
from ssmgraph.interop.errors import HFConfigError
from ssmgraph.interop.hf import layout_of
from ssmgraph.interop.hf.neox import GPTNeoX

from hf_models import NO_TOKENS, TOL, VOCAB, hf_model, max_diff, tokens, transformers  # isort: skip

SMALL = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, **NO_TOKENS}
WIDE = {"COLUMNS": "200", "NO_COLOR": "1"}


def configs() -> dict[str, Any]:
    """Defaults: parallel residual, rotary_pct 0.25 (2 of 8 features per head), biases, untied embed_out."""
    return {
        "parallel": transformers.GPTNeoXConfig(**SMALL, num_attention_heads=4, rotary_emb_base=500, layer_norm_eps=1e-4),
        "sequential-tied": transformers.GPTNeoXConfig(
            **SMALL,
            num_attention_heads=2,
            use_parallel_residual=False,
            rotary_pct=1.0,
            attention_bias=False,
            tie_word_embeddings=True,
            hidden_act="gelu_new",
        ),
        "half-linear": transformers.GPTNeoXConfig(
            **SMALL,
            num_attention_heads=2,
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0, "partial_rotary_factor": 0.5},
        ),
    }


@pytest.mark.parametrize("name", list(configs()))
def test_round_trip_gives_transformers_logits(name: str, tmp_path: Path) -> None:
    reference = hf_model(configs()[name])
    reference.save_pretrained(tmp_path / "hf")
    run = import_hf(tmp_path / "hf", tmp_path / "run")
    model, x = ssmgraph.load(run), tokens()
    assert max_diff(model, reference, x) <= TOL
    blueprint = {**model.blueprint.to_dict(), "name": "renamed"}  # told from Llama by its norms, not by an import's name
    found = layout_of(ssmgraph.build(blueprint), "built")
    assert isinstance(found, GPTNeoX) and found.parallel == reference.config.use_parallel_residual
    export_hf(run, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "gpt_neox" and config["architectures"] == ["GPTNeoXForCausalLM"]
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(back) is type(reference)
    assert max_diff(back, reference, x) <= TOL
    assert back.config.rope_parameters == reference.config.rope_parameters
    written, original = (load_file(str(tmp_path / folder / "model.safetensors")) for folder in ("out", "hf"))
    assert written.keys() == original.keys()  # embed_out on disk (transformers 5 renames it lm_head on load)
    for key, tensor in written.items():  # query_key_value re-interleaved exactly, every tensor in place
        assert torch.equal(tensor, original[key]), key


def test_query_key_value_is_deinterleaved_per_head(tmp_path: Path) -> None:
    """Rows of head h are [q_h | k_h | v_h] in the checkpoint; ssmgraph's qkv is q (all heads) | k | v."""
    reference = hf_model(configs()["parallel"])
    reference.save_pretrained(tmp_path / "hf")
    state = ssmgraph.load(import_hf(tmp_path / "hf", tmp_path / "run")).state_dict()
    fused = reference.state_dict()["gpt_neox.layers.1.attention.query_key_value.weight"].view(4, 3, 8, 32)
    q, k, v = state["blocks.1.mix.qkv.weight"].view(3, 4, 8, 32)
    assert torch.equal(q, fused[:, 0]) and torch.equal(k, fused[:, 1]) and torch.equal(v, fused[:, 2])


def test_transformers_4_fields_and_partial_rotation(tmp_path: Path) -> None:
    """A 4.x config.json (rotary_pct, rotary_emb_base, no rope_parameters) reads the same; rope_dims is head_dim · pct."""
    reference = hf_model(configs()["parallel"])
    reference.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    data = json.loads(path.read_text())
    del data["rope_parameters"]
    path.write_text(json.dumps({**data, "rotary_pct": 0.25, "rotary_emb_base": 500}))
    model = ssmgraph.load(import_hf(tmp_path / "hf", tmp_path / "run"))
    mix = model.nodes["blocks.0.mix"].args
    assert (mix["rope_dims"], mix["rope_base"], mix["heads"]) == (2, 500.0, 4)
    assert max_diff(model, reference, tokens()) <= TOL


REFUSED = [
    ({"rotary_pct": 0.375, "rope_parameters": None}, "rotary_pct"),  # 3 of 8 features: odd
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.1}}, "partial_rotary_factor"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 1.5}}, "partial_rotary_factor"),
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}}, "rope_parameters.rope_type"),
    ({"head_dim": 16}, "head_dim"),
    ({"hidden_act": "quick_gelu"}, "hidden_act"),
]


@pytest.mark.parametrize(("change", "field"), REFUSED)
def test_what_cannot_map_is_e601_naming_the_field(change: dict[str, Any], field: str, tmp_path: Path) -> None:
    hf_model(configs()["parallel"]).save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(HFConfigError) as caught:
        import_hf(tmp_path / "hf", tmp_path / "run")
    assert caught.value.code == "E601" and field in str(caught.value)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base, a, b: one random GPT-NeoX perturbed twice, saved by transformers, and imported (``*-run``)."""
    root = tmp_path_factory.mktemp("neox")
    model = hf_model(configs()["parallel"])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for i, name in enumerate(("base", "a", "b")):
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for key, tensor in model.state_dict().items():
                tensor.copy_(start[key] + (0.05 * torch.randn(tensor.shape, generator=gen) if i else 0))
        model.save_pretrained(root / name)
        _old_buffers(root / name)
        import_hf(root / name, root / f"{name}-run")
    return root


def _old_buffers(folder: Path) -> None:
    """Add the buffers that Pythia's checkpoints hold (causal mask, masked_bias, RoPE table): mergekit's
    gpt-neox architecture requires them, and import skips them."""
    from safetensors.torch import save_file

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    for i in range(2):
        attention = f"gpt_neox.layers.{i}.attention"
        tensors[f"{attention}.bias"] = torch.ones(1, 1, 16, 16, dtype=torch.bool).tril()
        tensors[f"{attention}.masked_bias"] = torch.tensor(-1e9)
        tensors[f"{attention}.rotary_emb.inv_freq"] = 500.0 ** -(torch.arange(0, 2, 2) / 2)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _merge(root: Path, text: str, out: str) -> Path:
    (root / f"{out}.yml").write_text(text, encoding="utf-8")
    result = CliRunner().invoke(app, ["merge", str(root / f"{out}.yml"), "--out", str(root / out)], env=WIDE)
    assert result.exit_code == 0, result.output
    return root / out


def _mergekit(root: Path, text: str, out: str) -> dict[str, torch.Tensor]:
    pytest.importorskip("mergekit")
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import MergeOptions, run_merge

    cwd = os.getcwd()
    os.chdir(root)  # mergekit reads model paths from the current folder
    try:
        options = MergeOptions(cuda=False, write_model_card=False, quiet=True, random_seed=0)
        LoaderCache.loaders.clear()  # mergekit caches loaders by (relative) model path across runs
        run_merge(MergeConfiguration.model_validate(yaml.safe_load(text)), str(root / out), options)
    finally:
        os.chdir(cwd)
    return load_file(str(root / out / "model.safetensors"))


MERGEKIT = {
    "linear": "models:\n  - model: a\n    parameters: {weight: 0.7}\n  - model: b\n    parameters: {weight: 0.3}\n"
    "merge_method: linear\ndtype: float32\n",
    "ties": "models:\n  - model: a\n    parameters: {weight: 1.0, density: 0.3}\n  - model: b\n    parameters: {weight: 0.5, density: 0.6}\n"
    "merge_method: ties\nbase_model: base\ndtype: float32\n",
}


@pytest.mark.parametrize("method", list(MERGEKIT))
def test_mergekit_configs_merge_neox_folders(folders: Path, method: str) -> None:
    ours = _merge(folders, MERGEKIT[method], f"mk-{method}")
    merged = load_file(str(ours / "model.safetensors"))
    theirs = _mergekit(folders, MERGEKIT[method], f"theirs-{method}")
    assert merged.keys() == theirs.keys()
    for key, tensor in merged.items():
        if key.endswith("attention.bias"):  # the causal mask: kept bool here, cast to `dtype` by mergekit
            assert tensor.dtype == torch.bool and torch.equal(tensor.float(), theirs[key]), key
            continue
        torch.testing.assert_close(tensor, theirs[key], rtol=0, atol=1e-6, msg=key)
    model = transformers.AutoModelForCausalLM.from_pretrained(ours).eval()
    assert max_diff(ssmgraph.load(import_hf(ours, folders / f"mk-{method}-run")), model, tokens()) <= TOL


def test_native_ties_merges_query_key_value_whole(folders: Path) -> None:
    """fused_parts has nothing for GPT-NeoX (query_key_value is one tensor), so TIES's top-k runs over the
    whole qkv, rows de-interleaved: the same set of values as mergekit's over query_key_value."""
    from ssmgraph.merge.parts import fused_parts

    base = ssmgraph.load(folders / "base-run")
    assert isinstance(layout_of(base, "base"), GPTNeoX) and fused_parts(base) == {}
    recipe = (
        "merge_method: ties\nmodels:\n  - {name: base, checkpoint: base-run}\n"
        "  - {name: a, checkpoint: a-run, parameters: {weight: 1.0}}\n  - {name: b, checkpoint: b-run, parameters: {weight: 0.5}}\n"
        "base_model: base\nparameters: {density: 0.3}\n"
    )
    run = _merge(folders, recipe, "native-ties")
    export_hf(run, folders / "native-ties-hf")
    ours = load_file(str(folders / "native-ties-hf" / "model.safetensors"))
    text = MERGEKIT["ties"].replace("density: 0.6", "density: 0.3")
    theirs = _mergekit(folders, text, "theirs-native-ties")
    for key in ("gpt_neox.layers.0.attention.query_key_value.weight", "gpt_neox.layers.1.attention.query_key_value.bias"):
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6, msg=key)
