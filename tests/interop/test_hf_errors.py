"""Hugging Face interop, errors: every way a conversion can fail is a located, coded error
(E600 files, E601 config values, E602 weights, E603 export), never a traceback; a failed import
leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hf_models import VOCAB
from safetensors.torch import load_file, save_file

import ssmgraph
from ssmgraph.interop import HFConfigError, HFExportError, HFFileError, HFWeightsError, InteropError, export_hf, import_hf

# ---- errors: located, coded, never a traceback ----------------------------------------------------------


def _copy(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "ckpt"))


def _edit_config(directory: Path, **changes: Any) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _import_error(directory: Path, tmp_path: Path, kind: type[InteropError]) -> str:
    with pytest.raises(kind) as info:
        import_hf(directory, tmp_path / "run")
    assert isinstance(info.value, ssmgraph.SsmgraphError) and info.value.exit_code == 2
    assert not (tmp_path / "run").exists(), "a failed import leaves nothing behind"
    return str(info.value)


def test_e600_missing_config(checkpoints: dict[str, Any], tmp_path: Path) -> None:
    directory = _copy(checkpoints["gpt2"][1], tmp_path)
    (directory / "config.json").unlink()
    message = _import_error(directory, tmp_path, HFFileError)
    assert HFFileError.code == "E600" and f"{directory / 'config.json'}: missing" in message and "save_pretrained" in message


def test_e600_missing_directory_and_weights(checkpoints: dict[str, Any], tmp_path: Path) -> None:
    assert "no such directory" in _import_error(tmp_path / "nothing", tmp_path, HFFileError)
    directory = _copy(checkpoints["gpt2"][1], tmp_path)
    (directory / "model.safetensors").unlink()
    assert "no weights (looked for model.safetensors" in _import_error(directory, tmp_path, HFFileError)


def test_e600_bin_with_pickled_objects_is_refused(checkpoints: dict[str, Any], tmp_path: Path) -> None:
    directory = _copy(checkpoints["gpt2"][1], tmp_path)
    (directory / "model.safetensors").unlink()
    torch.save({"wte.weight": torch.zeros(2), "payload": Path("x")}, directory / "pytorch_model.bin")
    message = _import_error(directory, tmp_path, HFFileError)
    assert "pytorch_model.bin: refused by the weights-only loader" in message and "safetensors" in message


def test_e600_existing_output_needs_overwrite(checkpoints: dict[str, Any], tmp_path: Path) -> None:
    _, source, run = checkpoints["mamba"]
    with pytest.raises(HFFileError, match="already exists") as info:
        import_hf(source, run)
    assert "--overwrite" in str(info.value)
    assert import_hf(source, run, overwrite=True) == run and ssmgraph.load(run) is not None
    with pytest.raises(HFFileError, match="would replace the model being converted"):
        export_hf(run, run, overwrite=True)
    with pytest.raises(HFFileError, match="or the folder holding it"):  # --out a parent of the source
        export_hf(run, run.parent, overwrite=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    for convert, src in ((export_hf, run), (import_hf, source)):
        with pytest.raises(HFFileError, match="holds other files, not an earlier conversion"):
            convert(src, tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    exported = export_hf(run, tmp_path / "hf")
    assert export_hf(run, exported, overwrite=True) == exported  # an earlier export is replaced


def test_e601_unsupported_model_type(checkpoints: dict[str, Any], tmp_path: Path) -> None:
    directory = _copy(checkpoints["gpt2"][1], tmp_path)
    _edit_config(directory, model_type="bert")
    message = _import_error(directory, tmp_path, HFConfigError)
    assert HFConfigError.code == "E601"
    assert f"{directory / 'config.json'}: field 'model_type': 'bert' is not supported" in message
    assert "mamba, gpt2, llama" in message


@pytest.mark.parametrize(
    ("family", "changes", "field"),
    [
        (
            "llama",
            {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 5e5, "factor": 8.0}},
            "'rope_parameters.rope_type': 'dynamic' is not supported",
        ),
        ("llama", {"partial_rotary_factor": 0.5}, "'partial_rotary_factor': 0.5 is not supported"),
        ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "'scale_attn_by_inverse_layer_idx': True is not supported"),
        ("gpt2", {"activation_function": "quick_gelu"}, "'activation_function': 'quick_gelu' has no ssmgraph equivalent"),
        ("gpt2", {"n_embd": "32"}, "'n_embd': expected int, got '32'"),
        ("mamba", {"hidden_act": "gelu"}, "'hidden_act': 'gelu' is not supported"),
    ],
)
def test_e601_config_values_that_do_not_map(
    checkpoints: dict[str, Any], tmp_path: Path, family: str, changes: dict[str, Any], field: str
) -> None:
    directory = _copy(checkpoints[family][1], tmp_path)
    _edit_config(directory, **changes)
    message = _import_error(directory, tmp_path, HFConfigError)
    assert f"{directory / 'config.json'}: field {field}" in message and "help:" in message


def test_e602_shape_mismatch_names_the_file_and_tensor(checkpoints: dict[str, Any], tmp_path: Path) -> None:
    directory = _copy(checkpoints["gpt2"][1], tmp_path)
    _edit_config(directory, vocab_size=VOCAB + 1)
    message = _import_error(directory, tmp_path, HFWeightsError)
    assert HFWeightsError.code == "E602"
    assert f"{directory / 'model.safetensors'}: tensor transformer.wte.weight ({VOCAB}, 32) does not fit" in message
    assert f"({VOCAB + 1}, 32)" in message


def test_e602_missing_and_unexpected_tensors(checkpoints: dict[str, Any], tmp_path: Path) -> None:
    directory = _copy(checkpoints["llama"][1], tmp_path)
    state = load_file(str(directory / "model.safetensors"))
    state.pop("lm_head.weight")
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    message = _import_error(directory, tmp_path, HFWeightsError)
    assert "model.safetensors: no tensor 'lm_head.weight'" in message and "base model" in message

    state["lm_head.weight"] = torch.zeros(VOCAB, 32)
    state["score.weight"] = torch.zeros(2, 32)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    assert "has no place for: score.weight" in _import_error(directory, tmp_path, HFWeightsError)


@pytest.mark.parametrize(
    ("blueprint", "params", "problem"),
    [
        ("lstm", {}, "no Hugging Face family fits a model of embed.token, head.lm, mix.lstm"),
        ("transformer", {"layers": 1}, "node 'pos' has kind='sinusoidal', not 'learned', unlike the GPT-2 layout"),
        ("mamba_model", {"layers": 1}, "the Mamba layout needs node 'blocks.0.norm' (norm.rms)"),
    ],
)
def test_e603_export_of_a_model_without_hf_layout(tmp_path: Path, blueprint: str, params: dict[str, Any], problem: str) -> None:
    ssmgraph.save(ssmgraph.build(blueprint, **params), tmp_path / "run")
    with pytest.raises(HFExportError) as info:
        export_hf(tmp_path / "run", tmp_path / "hf")
    assert HFExportError.code == "E603" and problem in str(info.value) and "docs/interop.md" in str(info.value)
    assert not (tmp_path / "hf").exists()
