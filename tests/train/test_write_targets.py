"""Fault injection, targets: writes never replace a training run's checkpoint (build, merge
--overwrite, save), overwriting a symlinked run folder keeps the link, and saved or exported
weights are as readable as the files beside them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fault_helpers import TINY, TRAIN_TINY, config
from typer.testing import CliRunner

import ssmgraph
from ssmgraph.cli import app
from ssmgraph.folders import latest_checkpoint
from ssmgraph.train import resume, train


# ---- targets -------------------------------------------------------------------------------------------
@pytest.fixture
def finished(tmp_path) -> Path:
    run = tmp_path / "run"
    train("lstm", run, config(steps=2, keep_checkpoints=2), overrides=TINY, progress=False)
    return run


def test_build_never_replaces_a_training_checkpoint(finished) -> None:
    checkpoint = latest_checkpoint(finished)
    before = sorted(p.name for p in checkpoint.iterdir())
    result = CliRunner().invoke(app, ["build", "lstm", "--set", "d_model=8", "--out", str(checkpoint)])
    assert result.exit_code == 2 and "checkpoint of the training run" in result.output, result.output
    assert sorted(p.name for p in checkpoint.iterdir()) == before
    resume(finished, steps=4, progress=False)


def test_merge_overwrite_never_replaces_the_checkpoint_it_reads(finished, tmp_path) -> None:
    checkpoint = latest_checkpoint(finished)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"merge_method: linear\nmodels:\n  - {{name: a, checkpoint: {finished}}}\n  - {{name: b, checkpoint: {finished}}}\n"
    )
    result = CliRunner().invoke(app, ["merge", str(recipe), "--out", str(checkpoint), "--overwrite"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert (checkpoint / "optimizer.safetensors").is_file()


def test_save_refuses_a_new_folder_inside_a_runs_checkpoints(finished) -> None:
    with pytest.raises(ssmgraph.SsmgraphError, match="checkpoint of the training run"):
        ssmgraph.save(ssmgraph.build("lstm", **TINY), finished / "checkpoints" / "step_00000099")


def test_overwrite_of_a_symlinked_run_folder_replaces_the_run_and_keeps_the_link(finished, tmp_path) -> None:
    link = tmp_path / "link"
    link.symlink_to(finished, target_is_directory=True)
    result = CliRunner().invoke(
        app,
        [*TRAIN_TINY, "--no-show", "--steps", "1", "--out", str(link), "--overwrite"],
    )
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and (finished / "run.json").is_file()
    assert latest_checkpoint(finished).name == "step_00000001"


def test_saved_weights_are_as_readable_as_their_json_neighbours(tmp_path) -> None:
    folder = ssmgraph.save(ssmgraph.build("lstm", **TINY), tmp_path / "model")
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert modes["model.safetensors"] == modes["meta.json"], modes


def test_exported_weights_are_as_readable_as_their_config(tmp_path) -> None:
    from ssmgraph.interop.hf import export_hf

    model = ssmgraph.save(ssmgraph.build("gpt", d_model=8, layers=1, heads=2, vocab=16, max_len=8), tmp_path / "model")
    folder = export_hf(model, tmp_path / "hf")
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"], modes
