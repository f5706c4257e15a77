"""Hugging Face interop, conversion: small random transformers models (nothing downloaded),
imported into ssmgraph and exported back, must give transformers' own logits (fp32, max abs
diff <= 1e-4) and greedy generations; and the same through the command line.

The errors of a conversion (E600-E603) are in test_hf_errors.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hf_models import FAMILIES, TOL, VOCAB, max_diff, tokens, transformers
from typer.testing import CliRunner

import ssmgraph
from ssmgraph.cli import app
from ssmgraph.interop import export_hf, import_hf

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
    carried = sorted(p.name for p in source.iterdir() if p.name == "generation_config.json")  # what save_pretrained wrote
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", "model.safetensors", *carried])
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
