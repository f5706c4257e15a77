"""Metadata through import -> merge -> export: config fields (token ids, position limit, RoPE) and the
tokenizer and generation files of a Hugging Face checkpoint come back in the export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import ssmgraph
from ssmgraph.interop import export_hf, import_hf
from ssmgraph.merge.recipe import recipe_from_text
from ssmgraph.merge.run import run_merge

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ["<unk>", "<s>", "</s>", "<pad>", *(f"w{i}" for i in range(57))]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def _checkpoint(folder: Path, seed: int) -> Path:
    config = transformers.LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=77,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
        rope_theta=1234.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(folder)
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)
    transformers.GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=3, max_new_tokens=9).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("meta")
    sources = [_checkpoint(root / f"hf{i}", seed=i) for i in range(2)]
    for i, source in enumerate(sources):
        import_hf(source, root / f"m{i}")
    recipe = recipe_from_text(
        "merge_method: linear\nmodels: [{name: a, checkpoint: m0}, {name: b, checkpoint: m1}]\n", base_dir=root
    )
    run_merge(recipe, root / "merged", progress=False)
    export_hf(root / "merged", root / "out")
    return {"root": root, "source": sources[0], "out": root / "out", "merged": root / "merged"}


def test_import_keeps_the_files_in_the_model_folder(exported: dict[str, Any]) -> None:
    meta = json.loads((exported["root"] / "m0" / "meta.json").read_text())
    present = [f for f in TOKENIZER_FILES if (exported["source"] / f).is_file()]
    assert set(present) <= set(meta["hf"]["files"])
    for name in meta["hf"]["files"]:
        assert (exported["root"] / "m0" / "hf" / name).read_bytes() == (exported["source"] / name).read_bytes()


def test_merge_carries_the_base_models_metadata(exported: dict[str, Any]) -> None:
    meta = json.loads((exported["merged"] / "meta.json").read_text())
    assert meta["hf"]["config"]["bos_token_id"] == 1
    assert (exported["merged"] / "hf" / "tokenizer.json").is_file()


def test_export_after_merge_keeps_config_fields_and_tokenizer(exported: dict[str, Any]) -> None:
    source, out = exported["source"], exported["out"]
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 3)
    assert config["max_position_embeddings"] == 77
    assert config["rope_parameters"]["rope_type"] == "linear" and config["rope_parameters"]["factor"] == 2.0
    assert config["rope_theta"] == 1234.0
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            assert (out / name).read_bytes() == (source / name).read_bytes(), name
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer("w3 w5").input_ids == [WORDS.index("w3"), WORDS.index("w5")]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 3)
    generation = transformers.GenerationConfig.from_pretrained(out)
    assert generation.max_new_tokens == 9
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        want = ssmgraph.load(exported["merged"])(x)
        assert (model(x).logits - want).abs().max().item() < 1e-4


def test_meta_json_cannot_name_files_outside_the_folder(exported: dict[str, Any], tmp_path: Path) -> None:
    from ssmgraph.interop.hf.metadata import listed_files

    folder = exported["root"] / "m0"
    meta = {"hf": {"files": ["../meta.json", "/etc/passwd", "tokenizer.json", 3]}}
    assert listed_files(folder, meta) == ["tokenizer.json"]
