"""Mamba-2: import gives transformers' logits (its torch path, lengths that are not a multiple of the chunk
size), export loads back with from_pretrained and gives them again (fp32, ≤ 1e-4), greedy generation
matches, models built from blueprints/mamba2.yaml export, and what cannot map is E601 naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import ssmgraph
from ssmgraph.interop import export_hf, import_hf
from ssmgraph.interop.errors import HFConfigError
from ssmgraph.interop.hf import layout_of
from ssmgraph.interop.hf.mamba2 import Mamba2

from hf_models import NO_TOKENS, TOL, VOCAB, hf_model, max_diff, tokens, transformers  # isort: skip

SMALL = {"vocab_size": VOCAB, "hidden_size": 16, "num_hidden_layers": 2, **NO_TOKENS}


def configs() -> dict[str, Any]:
    """Chunks of 4 and 8 tokens against lengths 11 and 13; groups, biases, tying and Δ limits switched on in turn."""
    return {
        "grouped": transformers.Mamba2Config(
            **SMALL, num_heads=8, head_dim=4, state_size=6, n_groups=2, chunk_size=4, conv_kernel=3, layer_norm_epsilon=1e-4
        ),
        "tied-bias-limits": transformers.Mamba2Config(
            **SMALL,
            num_heads=4,
            head_dim=8,
            state_size=4,
            n_groups=1,
            chunk_size=8,
            use_bias=True,
            use_conv_bias=False,
            tie_word_embeddings=True,
            time_step_limit=(0.01, 0.5),
        ),
    }


@pytest.mark.parametrize("name", list(configs()))
def test_round_trip_gives_transformers_logits(name: str, tmp_path: Path) -> None:
    reference = hf_model(configs()[name])
    reference.save_pretrained(tmp_path / "hf")
    run = import_hf(tmp_path / "hf", tmp_path / "run")
    model = ssmgraph.load(run).eval()
    assert model.nodes["blocks.0.mix"].args["chunk_size"] == 64  # the block's default; config.json's goes to meta.json
    for chunk in (64, 5):  # one chunk, and several for transformers' 4 or 8: lengths that are multiples of neither
        for mixer in (model.get_submodule(f"blocks.{i}.mix") for i in range(2)):
            mixer.chunk_size = chunk
        for length in (11, 13):
            assert max_diff(model, reference, tokens(length=length)) <= TOL
    found = layout_of(ssmgraph.build({**model.blueprint.to_dict(), "name": "renamed"}), "built")
    assert isinstance(found, Mamba2) and found.n_groups == reference.config.n_groups
    export_hf(run, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "mamba2" and config["architectures"] == ["Mamba2ForCausalLM"]
    assert config["chunk_size"] == reference.config.chunk_size
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(back) is type(reference)
    assert max_diff(back, reference, tokens(length=13)) <= TOL
    assert tuple(back.config.time_step_limit) == tuple(reference.config.time_step_limit)
    written, original = (load_file(str(tmp_path / folder / "model.safetensors")) for folder in ("out", "hf"))
    assert written.keys() == original.keys()
    for key, tensor in written.items():
        assert torch.equal(tensor, original[key]), key


def test_greedy_generation_matches_transformers(tmp_path: Path) -> None:
    reference = hf_model(configs()["grouped"])
    reference.save_pretrained(tmp_path / "hf")
    model = ssmgraph.load(import_hf(tmp_path / "hf", tmp_path / "run")).eval()
    prompt = tokens(batch=1, length=6)
    theirs = reference.generate(prompt, max_new_tokens=6, do_sample=False)
    assert model.generate(prompt, 6, temperature=0).tolist() == theirs.tolist()


def test_infinity_written_bare_by_transformers_4_reads(tmp_path: Path) -> None:
    """transformers 4 wrote time_step_limit as [0.0, Infinity] (not JSON); 5 writes {"__float__": "Infinity"}."""
    reference = hf_model(configs()["grouped"])
    reference.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    data = json.loads(path.read_text())
    assert data["time_step_limit"] == [0.0, {"__float__": "Infinity"}]
    path.write_text(json.dumps({**data, "time_step_limit": [0.0, float("inf")]}))  # json.dumps writes Infinity
    model = ssmgraph.load(import_hf(tmp_path / "hf", tmp_path / "run"))
    assert model.nodes["blocks.0.mix"].args["dt_limit_max"] is None
    assert max_diff(model.eval(), reference, tokens()) <= TOL
    assert "time_step_limit" not in json.loads((export_hf(tmp_path / "run", tmp_path / "out") / "config.json").read_text())


def test_blueprint_models_export(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ssmgraph.build("mamba2", vocab=VOCAB, d_model=32, layers=2, headdim=16, d_state=8).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ssmgraph.save(model, tmp_path / "run")
    hf = transformers.AutoModelForCausalLM.from_pretrained(export_hf(tmp_path / "run", tmp_path / "hf")).eval()
    assert max_diff(model, hf, tokens(length=70)) <= TOL  # two chunks of 64, the second partial


REFUSED = [
    ({"num_heads": 6}, "num_heads"),  # 6 × 4 channels are not 16 × 2
    ({"n_groups": 3}, "n_groups"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"time_step_limit": [0.5, 0.1]}, "time_step_limit"),
    ({"time_step_limit": [0.0, {"__float__": "NaN"}]}, "time_step_limit"),
    ({"time_step_limit": 0.1}, "time_step_limit"),
]


@pytest.mark.parametrize(("change", "field"), REFUSED)
def test_what_cannot_map_is_e601_naming_the_field(change: dict[str, Any], field: str, tmp_path: Path) -> None:
    hf_model(configs()["grouped"]).save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(HFConfigError) as caught:
        import_hf(tmp_path / "hf", tmp_path / "run")
    assert caught.value.code == "E601" and f"field {field!r}" in str(caught.value)
