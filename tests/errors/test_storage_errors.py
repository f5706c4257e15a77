"""Error codes of saved models: E400 (a checkpoint that cannot be loaded), and a broken blueprint
inside a checkpoint located in its file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import ssmgraph
from ssmgraph.errors import BlueprintError, SsmgraphError
from ssmgraph.serialization import CheckpointError, load, save

# ---- E400: checkpoints -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = ssmgraph.build("lstm", vocab=10, d_model=8, hidden=8, layers=1)
    return save(model, tmp_path_factory.mktemp("ckpt") / "model")


def _copy(saved: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(saved, target)
    return target


def _load_error(directory: Path) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        load(directory)
    assert info.value.code == "E400"
    assert isinstance(info.value, SsmgraphError) and info.value.exit_code == 2
    return info.value


def test_e400_checkpoint_loads_when_intact(saved: Path) -> None:
    assert isinstance(load(saved), ssmgraph.CompiledModel)


def test_e400_missing_directory(tmp_path: Path) -> None:
    error = _load_error(tmp_path / "nothing")
    assert "no such model directory" in str(error) and str(tmp_path / "nothing") in str(error)


def test_e400_not_a_model_directory(tmp_path: Path) -> None:
    error = _load_error(tmp_path)
    assert "not a saved ssmgraph model (missing blueprint.yaml, model.safetensors, meta.json)" in str(error)
    assert "ssmgraph.save" in str(error)


def test_e400_corrupt_meta(saved: Path, tmp_path: Path) -> None:
    directory = _copy(saved, tmp_path)
    (directory / "meta.json").write_text("{not json")
    assert "meta.json: unreadable" in str(_load_error(directory))


def test_e400_foreign_format(saved: Path, tmp_path: Path) -> None:
    directory = _copy(saved, tmp_path)
    (directory / "meta.json").write_text(json.dumps({"format": "other/9"}))
    assert "unsupported format 'other/9'" in str(_load_error(directory))


def test_e400_corrupt_weights(saved: Path, tmp_path: Path) -> None:
    directory = _copy(saved, tmp_path)
    (directory / "model.safetensors").write_bytes(b"garbage")
    assert "model.safetensors: cannot read weights" in str(_load_error(directory))


def test_e400_block_from_a_missing_plugin(saved: Path, tmp_path: Path) -> None:
    directory = _copy(saved, tmp_path)
    meta = json.loads((directory / "meta.json").read_text())
    meta["blocks"]["mix.fancy"] = "ssmgraph-fancy"
    meta["plugins"]["ssmgraph-fancy"] = "1.2"
    (directory / "meta.json").write_text(json.dumps(meta))
    error = str(_load_error(directory))
    assert "mix.fancy (from ssmgraph-fancy 1.2)" in error and "pip install ssmgraph-fancy" in error


def test_e400_weights_that_do_not_fit_the_blueprint(saved: Path, tmp_path: Path) -> None:
    directory = _copy(saved, tmp_path)
    blueprint = directory / "blueprint.yaml"
    blueprint.write_text(blueprint.read_text().replace("hidden: 8", "hidden: 16"))
    error = str(_load_error(directory))  # torch's RuntimeError (size mismatch) must not leak
    assert "weights do not match the blueprint" in error or "lstm" in error


def test_e400_weights_missing_a_tensor(saved: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    directory = _copy(saved, tmp_path)
    state = load_file(str(directory / "model.safetensors"))
    state.pop(min(state))
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "ssmgraph-model/1"})
    assert "weights do not match the blueprint (missing" in str(_load_error(directory))


def test_broken_blueprint_in_a_checkpoint_is_located(saved: Path, tmp_path: Path) -> None:
    directory = _copy(saved, tmp_path)
    (directory / "blueprint.yaml").write_text("ssmgraph: 1\nfoo: [\n")
    with pytest.raises(BlueprintError) as info:
        load(directory)
    (d,) = info.value.diagnostics
    assert d.code == "E101" and d.mark is not None and d.mark.file == str(directory / "blueprint.yaml")
