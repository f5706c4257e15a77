"""ssmgraph models (training runs, saved model folders) as the inputs of a mergekit config: the
output is an ssmgraph model, equal to the same merge written as a native recipe, and an imported
Hugging Face pair merges as the Hugging Face folders do (fp32, ≤ 1e-6)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import ssmgraph
from ssmgraph.cli.main import app
from ssmgraph.train.config import TrainConfig
from ssmgraph.train.trainer import train

TOL = 1e-6
WIDE = {"COLUMNS": "200", "NO_COLOR": "1"}
SMALL = {"d_model": 16, "layers": 2, "heads": 4, "kv_heads": 2}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base, a and b: Llama blueprints trained from scratch for two steps, each from its own seed."""
    root = tmp_path_factory.mktemp("runs")
    for seed, name in enumerate(("base", "a", "b")):
        config = TrainConfig(task="bytes", task_options={"seq_len": 16}, steps=2, batch_size=2, eval_size=4, seed=seed)
        train("llama", root / name, config, overrides=SMALL, progress=False)
    return root


def _merge(root: Path, config: dict[str, Any], out: str, *extra: str) -> Any:
    (root / f"{out}.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return CliRunner().invoke(app, ["merge", str(root / f"{out}.yml"), "--out", str(root / out), *extra], env=WIDE)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def _same(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == theirs.keys()
    for key, want in theirs.items():
        torch.testing.assert_close(ours[key], want, rtol=0, atol=TOL, msg=lambda m, key=key: f"{key}: {m}")


TIES = {
    "merge_method": "ties",
    "base_model": "base",
    "models": [{"model": "a", "parameters": {"weight": 0.7}}, {"model": "b", "parameters": {"weight": 0.4}}],
    "parameters": {"density": 0.4, "lambda": 0.9},
    "dtype": "float32",
}
NATIVE_TIES = {"merge_method": "ties", "base_model": "base", "parameters": {"density": 0.4, "scale": 0.9}}


def test_runs_merged_by_a_mergekit_config_equal_the_native_recipe(runs: Path) -> None:
    """TIES over the runs' latest checkpoints; qkv is trimmed per q, k, v part in both (fused_parts)."""
    result = _merge(runs, TIES, "dialect")
    assert result.exit_code == 0, result.output
    weights = {"a": 0.7, "b": 0.4}
    models = [
        {"name": n, "checkpoint": n, **({"parameters": {"weight": weights[n]}} if n in weights else {})}
        for n in ("base", "a", "b")
    ]
    native = _merge(runs, {**NATIVE_TIES, "models": models}, "native")
    assert native.exit_code == 0, native.output
    ours, theirs = _weights(runs / "dialect"), _weights(runs / "native")
    _same(ours, theirs)
    base = _weights(runs / "base" / "checkpoints" / "step_00000002")
    assert not torch.equal(ours["blocks.0.mix.qkv.weight"], base["blocks.0.mix.qkv.weight"])
    model = ssmgraph.load(runs / "dialect")  # the base's blueprint, the merged weights
    assert model.blueprint.name == "llama"
    meta = json.loads((runs / "dialect" / "meta.json").read_text())
    assert meta["merge"]["method"] == "ties" and meta["merge"]["dialect"] == "mergekit"
    assert (runs / "dialect" / "mergekit_config.yml").is_file()
    again = _merge(runs, TIES, "dialect")
    assert again.exit_code != 0 and "already exists" in again.output
    assert _merge(runs, TIES, "dialect", "--overwrite").exit_code == 0


def test_slices_that_keep_the_blueprint_merge_and_others_are_refused(runs: Path) -> None:
    """slerp by slices over every layer works; a slice that drops a layer cannot keep the base's blueprint."""
    sources = [{"model": "base", "layer_range": [0, 2]}, {"model": "a", "layer_range": [0, 2]}]
    slerp = {"merge_method": "slerp", "base_model": "base", "slices": [{"sources": sources}], "parameters": {"t": [0.2, 0.8]}}
    assert _merge(runs, slerp, "slerp").exit_code == 0
    short = [{"model": "base", "layer_range": [0, 1]}, {"model": "a", "layer_range": [0, 1]}]
    result = _merge(runs, {**slerp, "slices": [{"sources": short}]}, "short")
    assert result.exit_code != 0 and "E112" in result.output and "keeps the reference model's blueprint" in result.output
    assert not (runs / "short").exists()


def test_mixed_inputs_and_runs_without_checkpoints_are_located_errors(runs: Path, tmp_path: Path) -> None:
    (runs / "hf").mkdir()
    (runs / "hf" / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    save_file({"model.embed_tokens.weight": torch.zeros(4, 4)}, runs / "hf" / "model.safetensors")
    (runs / "empty" / "checkpoints").mkdir(parents=True)
    mixed = {**TIES, "models": [{"model": "a"}, {"model": "hf"}]}
    result = _merge(runs, mixed, "mixed")
    assert result.exit_code != 0 and "E112" in result.output and "models of one kind" in result.output
    assert "mixed.yml:5" in result.output and "ssmgraph import hf" in result.output  # models[1], the HF folder
    empty = _merge(runs, {**TIES, "models": [{"model": "a"}, {"model": "empty"}]}, "empty-out")
    assert empty.exit_code != 0 and "E210" in empty.output and "without any checkpoint" in empty.output
    assert not (runs / "mixed").exists() and not (runs / "empty-out").exists()


def test_an_imported_llama_pair_merges_as_its_hugging_face_folders(tmp_path: Path) -> None:
    """Hugging Face folders merged then imported equal the imported models merged (ssmgraph names, qkv per part)."""
    transformers = pytest.importorskip("transformers")
    from ssmgraph.interop import import_hf

    config = transformers.LlamaConfig(
        vocab_size=48,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for i, name in enumerate(("base", "a", "b")):
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for key, tensor in model.state_dict().items():
                tensor.copy_(start[key] + (0.02 * torch.randn(tensor.shape, generator=gen) if i else 0))
        model.save_pretrained(tmp_path / "hf" / name)
        import_hf(tmp_path / "hf" / name, tmp_path / "ssm" / name)
    ties = {
        **TIES,
        "models": [
            {"model": "a", "parameters": {"weight": [0.2, 0.9], "density": 0.5}},
            {"model": "b", "parameters": {"weight": 0.4, "density": 0.3}},
        ],
    }
    for kind in ("hf", "ssm"):
        result = _merge(tmp_path / kind, ties, "merged")
        assert result.exit_code == 0, result.output
    imported = import_hf(tmp_path / "hf" / "merged", tmp_path / "imported")
    _same(_weights(tmp_path / "ssm" / "merged"), _weights(imported))
    meta = json.loads((tmp_path / "ssm" / "merged" / "meta.json").read_text())
    assert meta["hf"]["config"]["model_type"] == "llama"  # the base's Hugging Face metadata: it exports back


def test_imported_gemma2_merges_as_its_folders_and_keeps_its_layer_kinds(tmp_path: Path) -> None:
    """slerp of imported Gemma 2 models equals the Hugging Face merge imported; a slice that merges a
    sliding-window layer into a global one cannot keep the blueprint (E112)."""
    transformers = pytest.importorskip("transformers")
    from ssmgraph.interop import import_hf

    config = transformers.Gemma2Config(
        vocab_size=48,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        sliding_window=4,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    for seed, name in enumerate(("base", "a")):
        torch.manual_seed(seed)
        transformers.Gemma2ForCausalLM(config).save_pretrained(tmp_path / "hf" / name)
        import_hf(tmp_path / "hf" / name, tmp_path / "ssm" / name)
    sources = [{"model": "base", "layer_range": [0, 2]}, {"model": "a", "layer_range": [0, 2]}]
    slerp = {"merge_method": "slerp", "base_model": "base", "slices": [{"sources": sources}], "parameters": {"t": [0.3, 0.6]}}
    for kind in ("hf", "ssm"):
        result = _merge(tmp_path / kind, slerp, "merged")
        assert result.exit_code == 0, result.output
    _same(_weights(tmp_path / "ssm" / "merged"), _weights(import_hf(tmp_path / "hf" / "merged", tmp_path / "imported")))
    crossed = [{"model": "base", "layer_range": [0, 1]}, {"model": "a", "layer_range": [1, 2]}]
    rest = [{"model": "base", "layer_range": [1, 2]}, {"model": "a", "layer_range": [1, 2]}]
    result = _merge(tmp_path / "ssm", {**slerp, "slices": [{"sources": crossed}, {"sources": rest}]}, "crossed")
    assert result.exit_code != 0 and "E112" in result.output, result.output
    assert "output layer 0 is merged from layer 1 of a" in result.output and not (tmp_path / "ssm" / "crossed").exists()
