"""Hugging Face interop: small random transformers models (nothing downloaded), imported into
ssmgraph and exported back, must give transformers' own logits (fp32, max abs diff <= 1e-4),
and every way a conversion can fail must be a located error (E600-E603)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import ssmgraph
from ssmgraph.cli import app
from ssmgraph.interop import HFConfigError, HFExportError, HFFileError, HFWeightsError, InteropError, export_hf, import_hf

transformers = pytest.importorskip("transformers")

TOL = 1e-4
VOCAB = 61
NO_TOKENS = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}


def _configs() -> dict[str, Any]:
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


FAMILIES = list(_configs())


def _hf_model(config: Any) -> Any:
    """A random model whose weights are all perturbed, so no tensor keeps a trivial init (zero biases, unit norms)."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path, Path]]:
    """family -> (transformers model, its save_pretrained directory, the imported run)."""
    root = tmp_path_factory.mktemp("hf")
    found = {}
    for name, config in _configs().items():
        model = _hf_model(config)
        model.save_pretrained(root / name)
        found[name] = (model, root / name, import_hf(root / name, root / f"{name}-run"))
    return found


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


# ---- import, export, generation --------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_import_gives_transformers_logits(checkpoints: dict[str, Any], family: str) -> None:
    hf, _, run = checkpoints[family]
    model = ssmgraph.load(run).eval()
    diff = max_diff(model, hf, tokens())
    assert diff <= TOL, f"{family}: max abs logit difference {diff:.2e}"


@pytest.mark.parametrize("family", FAMILIES)
def test_export_loads_in_transformers_with_the_same_logits(checkpoints: dict[str, Any], family: str, tmp_path: Path) -> None:
    hf, source, run = checkpoints[family]
    out = export_hf(run, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert max_diff(back, hf, tokens()) <= TOL
    original, exported = (json.loads((d / "config.json").read_text()) for d in (source, out))
    assert exported["model_type"] == original["model_type"]
    assert exported["tie_word_embeddings"] == original["tie_word_embeddings"]
    assert exported["pad_token_id"] == original["pad_token_id"], "token ids the import kept come back"


@pytest.mark.parametrize("family", ["gpt2", "llama", "mamba"])
def test_greedy_generation_matches_transformers(checkpoints: dict[str, Any], family: str) -> None:
    hf, _, run = checkpoints[family]
    prompt = tokens(batch=1, length=5)
    ours = ssmgraph.load(run).eval().generate(prompt, 6, temperature=0)
    theirs = hf.generate(prompt, max_new_tokens=6, do_sample=False)
    assert ours.tolist() == theirs.tolist()


@pytest.mark.parametrize(
    ("blueprint", "params"),
    [
        ("gpt", {"heads": 2}),  # attention without biases: exported as zero biases
        ("llama", {"heads": 4, "kv_heads": 2}),
        ("llama", {"heads": 2, "kv_heads": None}),  # null: as many key/value heads as query heads
        ("mamba", {}),
    ],
)
def test_models_built_in_ssmgraph_export(blueprint: str, params: dict[str, Any], tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ssmgraph.build(blueprint, vocab=VOCAB, d_model=32, layers=2, **params).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ssmgraph.save(model, tmp_path / "run")
    hf = transformers.AutoModelForCausalLM.from_pretrained(export_hf(tmp_path / "run", tmp_path / "hf")).eval()
    assert max_diff(model, hf, tokens()) <= TOL


def test_bin_checkpoint_of_a_base_model_with_old_buffers(checkpoints: dict[str, Any], tmp_path: Path) -> None:
    """A .bin (weights-only load) with GPT2Model names (no ``transformer.``) and the causal-mask buffers old checkpoints kept."""
    hf, source, _ = checkpoints["gpt2"]
    state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    state["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32, dtype=torch.bool))
    (tmp_path / "ckpt").mkdir()
    shutil.copy(source / "config.json", tmp_path / "ckpt")
    torch.save(state, tmp_path / "ckpt" / "pytorch_model.bin")
    model = ssmgraph.load(import_hf(tmp_path / "ckpt", tmp_path / "run")).eval()
    assert max_diff(model, hf, tokens()) <= TOL


def test_sharded_safetensors(checkpoints: dict[str, Any], tmp_path: Path) -> None:
    hf, _, _ = checkpoints["llama"]
    hf.save_pretrained(tmp_path / "ckpt", max_shard_size="20KB")
    assert (tmp_path / "ckpt" / "model.safetensors.index.json").is_file()
    model = ssmgraph.load(import_hf(tmp_path / "ckpt", tmp_path / "run")).eval()
    assert max_diff(model, hf, tokens()) <= TOL


def test_paths_may_start_with_a_tilde(checkpoints: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hf, source, _ = checkpoints["gpt2"]
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(source, tmp_path / "ckpt")
    model = ssmgraph.load(import_hf("~/ckpt", "~/run")).eval()
    assert max_diff(model, hf, tokens()) <= TOL
    assert (export_hf("~/run", "~/back") / "config.json").is_file()


def test_import_needs_no_transformers(checkpoints: dict[str, Any], tmp_path: Path) -> None:
    _, source, _ = checkpoints["mamba"]
    script = (
        "import sys; sys.modules['transformers'] = None\n"  # any import of it now fails
        "from ssmgraph.interop import import_hf; import ssmgraph\n"
        f"ssmgraph.load(import_hf({str(source)!r}, {str(tmp_path / 'run')!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_import_records_the_source_and_writes_a_plain_blueprint(checkpoints: dict[str, Any]) -> None:
    _, source, run = checkpoints["llama"]
    meta = json.loads((run / "meta.json").read_text())
    assert meta["hf"]["source"] == str(source.resolve()) and meta["hf"]["config"]["model_type"] == "llama"
    text = (run / "blueprint.yaml").read_text()
    assert "mix.attention" in text and "kv_heads: 2" in text and "rope_base: 500.0" in text
    assert ssmgraph.load_blueprint(run / "blueprint.yaml").name == "llama"


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
            {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
            "'rope_parameters.rope_type': 'llama3' is not supported",
        ),
        ("llama", {"head_dim": 16}, "'head_dim': 16 is not hidden_size / num_attention_heads = 8"),
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


# ---- command line ----------------------------------------------------------------------------------------


def test_cli_import_then_export(checkpoints: dict[str, Any], tmp_path: Path) -> None:
    hf, source, _ = checkpoints["llama"]
    runner = CliRunner()
    env = {"COLUMNS": "200", "NO_COLOR": "1"}
    result = runner.invoke(app, ["import", "hf", str(source), "--out", str(tmp_path / "run")], env=env)
    assert result.exit_code == 0, result.stderr
    assert f"imported {source} into {tmp_path / 'run'}" in result.stderr.replace("\n", "")
    result = runner.invoke(app, ["export", "hf", str(tmp_path / "run"), "-o", str(tmp_path / "hf")], env=env)
    assert result.exit_code == 0, result.stderr
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert max_diff(back, hf, tokens()) <= TOL

    result = runner.invoke(app, ["import", "hf", str(source), "--out", str(tmp_path / "run")], env=env)
    assert result.exit_code == 2 and result.stderr.startswith("error[E600]: ") and "Traceback" not in result.stderr
    assert (
        runner.invoke(app, ["import", "hf", str(source), "--out", str(tmp_path / "run"), "--overwrite"], env=env).exit_code == 0
    )


def test_cli_help_teaches_the_commands() -> None:
    result = CliRunner().invoke(app, ["import", "hf", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0 and "GPT-2, Llama or Mamba" in result.stdout and "--overwrite" in result.stdout
    assert "export" in CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).stdout
