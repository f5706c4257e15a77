"""Tampered Hugging Face folders: config.json and the weights index are read within limits, shard
names stay inside the folder, and a refused .bin never comes with advice to load it unrestricted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import ssmgraph
from ssmgraph.cli import app
from ssmgraph.interop import HFFileError, import_hf

transformers = pytest.importorskip("transformers")

INDEX = "model.safetensors.index.json"
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 saved in several safetensors shards."""
    config = transformers.GPT2Config(
        vocab_size=31, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=None, eos_token_id=None
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    folder = tmp_path_factory.mktemp("hf") / "ckpt"
    model.save_pretrained(folder, max_shard_size="20KB")
    assert len(set(_weight_map(folder).values())) > 1
    return folder


@pytest.fixture
def ckpt(sharded: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(sharded, tmp_path / "ckpt"))


def _weight_map(folder: Path) -> dict[str, str]:
    return json.loads((folder / INDEX).read_text())["weight_map"]


def _rename_shard(folder: Path, old: str, new: str) -> None:
    index = json.loads((folder / INDEX).read_text())
    index["weight_map"] = {k: new if v == old else v for k, v in index["weight_map"].items()}
    (folder / INDEX).write_text(json.dumps(index))


def _import_error(folder: Path, tmp_path: Path) -> str:
    with pytest.raises(HFFileError) as info:
        import_hf(folder, tmp_path / "run")
    assert info.value.code == "E600" and not (tmp_path / "run").exists()
    return str(info.value)


# ---- shard names must stay inside the folder ---------------------------------------------------------
@pytest.mark.parametrize("outside", ["../outside/{name}", "{tmp}/outside/{name}", "sub/../../outside/{name}"])
def test_shard_names_that_leave_the_folder_are_refused(ckpt: Path, tmp_path: Path, outside: str) -> None:
    name = min(_weight_map(ckpt).values())
    (tmp_path / "outside").mkdir()
    shutil.move(ckpt / name, tmp_path / "outside" / name)  # the weights exist, just not in the folder
    entry = outside.format(name=name, tmp=tmp_path)
    _rename_shard(ckpt, name, entry)
    message = _import_error(ckpt, tmp_path)
    assert f"{ckpt / INDEX}: weight_map entry {entry!r} is not a file inside {ckpt}" in message


def test_a_symlinked_folder_on_the_way_is_refused(ckpt: Path, tmp_path: Path) -> None:
    name = min(_weight_map(ckpt).values())
    (tmp_path / "outside").mkdir()
    shutil.move(ckpt / name, tmp_path / "outside" / name)
    (ckpt / "sub").symlink_to(tmp_path / "outside", target_is_directory=True)
    _rename_shard(ckpt, name, f"sub/{name}")
    assert "is not a file inside" in _import_error(ckpt, tmp_path)


@pytest.mark.parametrize("entry", ["x\x00.safetensors", "loop/x.safetensors", "C:x.safetensors", "..\\outside\\x.safetensors"])
def test_odd_shard_names_are_refused_by_name(ckpt: Path, tmp_path: Path, entry: str) -> None:
    (ckpt / "loop").symlink_to(ckpt / "loop", target_is_directory=True)
    _rename_shard(ckpt, min(_weight_map(ckpt).values()), entry)
    assert f"weight_map entry {entry!r} is not a file inside" in _import_error(ckpt, tmp_path)


def test_symlinked_shard_files_are_followed(ckpt: Path, tmp_path: Path) -> None:
    """The Hugging Face cache keeps each file as a symlink to a blob outside the snapshot folder."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for i, name in enumerate(sorted(set(_weight_map(ckpt).values()))):
        shutil.move(ckpt / name, blobs / f"blob{i}")
        (ckpt / name).symlink_to(Path("..") / "blobs" / f"blob{i}")
    assert ssmgraph.load(import_hf(ckpt, tmp_path / "run")) is not None


# ---- config.json and the index are read within limits ------------------------------------------------
def _insert(path: Path, key: str, raw: str) -> None:
    text = path.read_text().rstrip()
    path.write_text(f'{text[:-1].rstrip()}, "{key}": {raw}}}')


@pytest.mark.parametrize(
    "file, raw, problem",
    [
        ("config.json", DEEP, "cannot read the model's config (values nested deeper than 100 levels)"),
        ("config.json", "9" * 100_000, "cannot read the model's config (an integer of 100000 digits"),
        ("config.json", "1e999", "cannot read the model's config (the number 1e999 overflows to infinity)"),
        (INDEX, DEEP, "cannot read the weights index (values nested deeper than 100 levels)"),
        (INDEX, "9" * 100_000, "cannot read the weights index (an integer of 100000 digits"),
    ],
)
def test_files_beyond_the_limits(ckpt: Path, tmp_path: Path, file: str, raw: str, problem: str) -> None:
    _insert(ckpt / file, "extra", raw)
    assert f"{ckpt / file}: {problem}" in _import_error(ckpt, tmp_path)


def test_config_value_that_overflows_is_not_taken_as_infinity(ckpt: Path, tmp_path: Path) -> None:
    config = (ckpt / "config.json").read_text()
    (ckpt / "config.json").write_text(config.replace('"layer_norm_epsilon": 1e-05', '"layer_norm_epsilon": 1e999'))
    assert "1e999 overflows to infinity" in _import_error(ckpt, tmp_path)


@pytest.mark.parametrize(
    "index, problem",
    [
        ({"metadata": {}}, "missing key 'weight_map'"),
        ({"weight_map": ["a"]}, "key 'weight_map': expected object, got array"),
        ({"weight_map": {"wte.weight": 7}}, "key 'weight_map.wte.weight': expected string, got integer 7"),
    ],
)
def test_index_of_the_wrong_shape(ckpt: Path, tmp_path: Path, index: dict[str, Any], problem: str) -> None:
    (ckpt / INDEX).write_text(json.dumps(index))
    assert f"{ckpt / INDEX}: {problem}" in _import_error(ckpt, tmp_path)


def test_config_not_utf8(ckpt: Path, tmp_path: Path) -> None:
    (ckpt / "config.json").write_bytes(b'{"model_type": "gpt2\xff"}')
    assert "config.json: cannot read the model's config (not UTF-8 text" in _import_error(ckpt, tmp_path)


def test_cli_import_of_a_tampered_index_exits_2(ckpt: Path, tmp_path: Path) -> None:
    name = min(_weight_map(ckpt).values())
    shutil.move(ckpt / name, tmp_path / name)
    _rename_shard(ckpt, name, f"../{name}")
    result = CliRunner().invoke(app, ["import", "hf", str(ckpt), "--out", str(tmp_path / "run")], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "error[E600]" in result.output and "is not a file inside" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


# ---- a refused .bin: no advice to load it unrestricted -----------------------------------------------
@pytest.mark.parametrize(
    "content, problem", [("pickle", "holds pickled objects other than tensors (it names pathlib"), ("garbage", "pickled objects")]
)
def test_refused_bin_never_advises_weights_only_false(ckpt: Path, tmp_path: Path, content: str, problem: str) -> None:
    (ckpt / INDEX).unlink()
    for shard in ckpt.glob("model-*.safetensors"):
        shard.unlink()
    if content == "pickle":
        torch.save({"wte.weight": torch.zeros(2), "payload": Path("x")}, ckpt / "pytorch_model.bin")
    else:
        (ckpt / "pytorch_model.bin").write_bytes(b"garbage")
    message = _import_error(ckpt, tmp_path)
    assert f"{ckpt / 'pytorch_model.bin'}: refused by the weights-only loader" in message and problem in message
    assert "convert it to safetensors with the tool that made it" in message
    assert "weights_only" not in message.replace("weights-only", "") and "Re-running" not in message
