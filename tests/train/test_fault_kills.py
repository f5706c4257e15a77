"""Fault injection, kills: a process killed at every write boundary of a save or a checkpoint.

Kills are real (``os._exit`` in a child process at the n-th rename or file write), so no
``finally`` or ``except`` of ours runs — as with SIGKILL or a power cut. After each kill the
folder must hold the old model or the new one, and the next write or ``--resume`` must clean
up what the kill left.

Concurrent writers and stale locks are in test_folder_locks.py, refused targets in
test_write_targets.py.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from fault_helpers import TINY, config

import ssmgraph
from ssmgraph import folders
from ssmgraph.folders import folder_lock, latest_checkpoint
from ssmgraph.train import resume, train

KILLER = textwrap.dedent(
    """
    import os, sys
    import torch
    import ssmgraph
    from ssmgraph import folders

    def die_at(module, name, n=1, after=False):
        \"\"\"Exit at once (no cleanup runs) at the n-th call of module.name, before or after it.\"\"\"
        calls = [0]
        real = getattr(module, name)

        def dying(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n and not after:
                os._exit(9)
            result = real(*args, **kwargs)
            if calls[0] == n:
                os._exit(9)
            return result

        setattr(module, name, dying)
    """
)


def run_child(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "child.py"
    path.write_text(KILLER + textwrap.dedent(script), encoding="utf-8")
    return subprocess.run([sys.executable, str(path)], check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


# ---- saving a model: every boundary of the swap --------------------------------------------------------
BOUNDARIES = {
    "writing the files": ("folders", "_fsync", 2, False, True),
    "before the exchange": ("folders", "_exchange", 1, False, True),
    "after the exchange": ("folders", "_exchange", 1, True, True),
    "before the first rename": ("os", "replace", 1, False, False),
    "between the two renames": ("os", "replace", 2, False, False),
    "after the two renames": ("os", "replace", 2, True, False),
    "removing the old copy": ("folders", "_remove", 1, False, False),
}


@pytest.mark.parametrize("boundary", list(BOUNDARIES))
def test_a_kill_at_any_boundary_of_a_save_leaves_the_old_model_or_the_new(tmp_path, boundary) -> None:
    module, name, n, after, exchange = BOUNDARIES[boundary]
    torch.manual_seed(0)
    old = ssmgraph.build("lstm", **TINY).state_dict()
    ssmgraph.save(ssmgraph.build("lstm", **TINY), tmp_path / "model")
    torch.manual_seed(0)
    ssmgraph.save(ssmgraph.build("lstm", **TINY), tmp_path / "model")  # same weights again
    child = run_child(
        f"""
        torch.manual_seed(1)
        new = ssmgraph.build("lstm", d_model=8, layers=1, hidden=8)
        if not {exchange}:
            folders._RENAMEAT2 = None
        die_at({module}, "{name}", {n}, {after})
        ssmgraph.save(new, "model")
        """,
        tmp_path,
    )
    assert child.returncode == 9, child.stderr
    torch.manual_seed(1)
    new = ssmgraph.build("lstm", **TINY).state_dict()
    with folder_lock(tmp_path / "model"):  # what the next writer of the folder does first
        folders.repair(tmp_path, only="model")
    loaded = ssmgraph.load(tmp_path / "model").state_dict()
    assert all(torch.equal(loaded[k], old[k]) for k in old) or all(torch.equal(loaded[k], new[k]) for k in new)
    assert leftovers(tmp_path) == []


def test_the_next_save_repairs_a_swap_killed_between_its_two_renames(tmp_path) -> None:
    ssmgraph.save(ssmgraph.build("lstm", **TINY), tmp_path / "model")
    child = run_child(
        """
        folders._RENAMEAT2 = None
        die_at(os, "replace", 2)  # 1: model -> .model.old-*, 2: the temporary -> model
        ssmgraph.save(ssmgraph.build("lstm", d_model=8, layers=1, hidden=8), "model")
        """,
        tmp_path,
    )
    assert child.returncode == 9, child.stderr
    assert not (tmp_path / "model").exists() and [n for n in leftovers(tmp_path) if n.startswith(".model.old-")]
    ssmgraph.save(ssmgraph.build("lstm", **TINY), tmp_path / "model")  # repairs, then replaces
    assert leftovers(tmp_path) == []
    ssmgraph.load(tmp_path / "model")


def test_an_interrupted_swap_is_repaired_on_resume_even_with_keep_checkpoints_1(tmp_path) -> None:
    run = tmp_path / "run"
    train("lstm", run, config(steps=4), overrides=TINY, progress=False)
    checkpoints = run / "checkpoints"
    latest = latest_checkpoint(run)
    assert [p.name for p in checkpoints.iterdir() if p.name.startswith("step_")] == [latest.name]
    latest.rename(checkpoints / f".{latest.name}.old-0123abcd")  # as a kill between the two renames leaves it
    (checkpoints / ".step_00000009.tmp-89abcdef").mkdir()  # and a kill mid-write
    result = resume(run, steps=6, progress=False)
    assert result.step == 6
    assert leftovers(checkpoints) == []
    assert latest_checkpoint(run).name == "step_00000006"


# ---- training: a kill inside each checkpoint write -----------------------------------------------
@pytest.mark.parametrize("boundary", [1, 2, 3, 4])
def test_a_run_killed_inside_a_checkpoint_write_resumes_and_cleans_up(tmp_path, boundary) -> None:
    # writes of the second checkpoint: 1 model weights, 2 optimizer state, 3 the rename into place, 4 the LATEST pointer
    child = run_child(
        f"""
        from ssmgraph.train import TrainConfig, loop, train
        import ssmgraph.serialization as serialization
        import ssmgraph.train.checkpoint as checkpoint_module
        cfg = TrainConfig(task="selective_copying", task_options={{"seq_len": 16, "n_memorize": 2}}, steps=6, batch_size=4,
                          warmup_steps=1, eval_interval=100, eval_size=8, log_interval=1, checkpoint_interval=2, keep_checkpoints=1)
        real_checkpoint = loop.save_checkpoint
        checkpoints = [0]
        def second_checkpoint_dies(*args, **kwargs):
            checkpoints[0] += 1
            if checkpoints[0] == 2:
                die_at(serialization, "save_file", {boundary}) if {boundary} <= 2 else None
                die_at(os, "replace", 1) if {boundary} == 3 else None
                die_at(checkpoint_module, "write_text_atomic", 1) if {boundary} == 4 else None
            return real_checkpoint(*args, **kwargs)
        loop.save_checkpoint = second_checkpoint_dies
        train("lstm", "run", cfg, overrides={{"d_model": 8, "layers": 1, "hidden": 8}}, progress=False)
        """,
        tmp_path,
    )
    assert child.returncode == 9, child.stderr
    run = tmp_path / "run"
    assert latest_checkpoint(run) is not None  # the first checkpoint (or the second) is whole
    ssmgraph.load(run)
    result = resume(run, progress=False)
    assert result.step == 6
    assert leftovers(run / "checkpoints") == []
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_")] == ["step_00000006"]
