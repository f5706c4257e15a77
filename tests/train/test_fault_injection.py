"""Fault injection: a process killed at every write boundary, concurrent writers, stale locks.

Kills are real (``os._exit`` in a child process at the n-th rename or file write), so no
``finally`` or ``except`` of ours runs — as with SIGKILL or a power cut. After each kill the
folder must hold the old model or the new one, and the next write or ``--resume`` must clean
up what the kill left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import ssmgraph
from ssmgraph import folders
from ssmgraph.cli import app
from ssmgraph.folders import FolderBusyError, folder_lock, latest_checkpoint, lock_file
from ssmgraph.train import TrainConfig, resume, train

TINY = {"d_model": 8, "layers": 1, "hidden": 8}

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


def config(**changes) -> TrainConfig:
    base = {
        "task": "selective_copying", "task_options": {"seq_len": 16, "n_memorize": 2}, "steps": 6, "batch_size": 4, "warmup_steps": 1,
        "eval_interval": 100, "eval_size": 8, "log_interval": 1, "checkpoint_interval": 2, "keep_checkpoints": 1,
    }
    return TrainConfig(**{**base, **changes})


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
        from ssmgraph.train import TrainConfig, train, trainer
        import ssmgraph.serialization as serialization
        import ssmgraph.train.checkpoint as checkpoint_module
        cfg = TrainConfig(task="selective_copying", task_options={{"seq_len": 16, "n_memorize": 2}}, steps=6, batch_size=4,
                          warmup_steps=1, eval_interval=100, eval_size=8, log_interval=1, checkpoint_interval=2, keep_checkpoints=1)
        real_checkpoint = trainer.save_checkpoint
        checkpoints = [0]
        def second_checkpoint_dies(*args, **kwargs):
            checkpoints[0] += 1
            if checkpoints[0] == 2:
                die_at(serialization, "save_file", {boundary}) if {boundary} <= 2 else None
                die_at(os, "replace", 1) if {boundary} == 3 else None
                die_at(checkpoint_module, "write_text_atomic", 1) if {boundary} == 4 else None
            return real_checkpoint(*args, **kwargs)
        trainer.save_checkpoint = second_checkpoint_dies
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


# ---- concurrent writers ---------------------------------------------------------------------------------
HOLDER = """
import sys, time
from ssmgraph.folders import folder_lock
with folder_lock(__import__("pathlib").Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def hold(target: Path):
    """A second process holding the lock of ``target``, killed at the end."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(target)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    try:
        yield target, holder
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture
def held(tmp_path):
    yield from hold(tmp_path / "target")


@pytest.fixture
def held_run(tmp_path):
    """A finished run whose folder another process holds."""
    train("lstm", tmp_path / "target", config(steps=2), overrides=TINY, progress=False)
    yield from hold(tmp_path / "target")


def test_a_second_trainer_of_a_folder_is_refused_naming_the_holder(held) -> None:
    target, holder = held
    result = CliRunner().invoke(app, ["train", "lstm", "--task", "selective_copying", "-q", "--steps", "2", "--out", str(target)])
    assert result.exit_code == 2, result.output
    assert "E410" in result.output and f"pid {holder.pid}" in result.output and "Traceback" not in result.output
    assert not target.exists()


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--resume", "--out", "{target}"],
        ["train", "lstm", "--task", "selective_copying", "--overwrite", "--out", "{target}"],
        ["build", "lstm", "--set", "d_model=8", "--out", "{target}"],
        ["merge", "{recipe}", "--out", "{target}"],
    ],
    ids=["resume", "overwrite", "build", "merge"],
)
def test_every_writer_respects_the_lock(request, tmp_path, command) -> None:
    target, _ = request.getfixturevalue("held_run" if command[0] == "train" else "held")
    before = sorted(p.name for p in target.rglob("*")) if target.exists() else None
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("merge_method: linear\nmodels:\n  - {name: a, blueprint: lstm, set: {d_model: 8}}\n  - {name: b, blueprint: lstm, set: {d_model: 8}}\n")
    args = [a.format(target=target, recipe=recipe) for a in command]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "E410" in result.output, result.output
    assert (sorted(p.name for p in target.rglob("*")) if target.exists() else None) == before


def test_a_lock_left_by_a_killed_process_is_taken_over(held) -> None:
    target, holder = held
    holder.kill()
    holder.wait()
    assert lock_file(target.resolve()).exists() or True  # the file may stay; its flock died with the holder
    with folder_lock(target):
        assert json.loads(lock_file(target.resolve()).read_text())["pid"] == os.getpid()
    assert not lock_file(target.resolve()).exists()


def test_without_flock_a_stale_record_of_a_dead_pid_is_taken_over_and_a_live_one_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(folders, "fcntl", None)
    target = tmp_path / "target"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=False, capture_output=True, text=True).stdout.strip()
    host = __import__("socket").gethostname()
    lock_file(target).write_text(json.dumps({"pid": int(dead), "host": host, "command": "ssmgraph train", "since": "then"}))
    with folder_lock(target):
        pass
    lock_file(target).write_text(json.dumps({"pid": os.getppid(), "host": host, "command": "ssmgraph merge", "since": "now"}))
    with pytest.raises(FolderBusyError, match="ssmgraph merge"), folder_lock(target):
        pass


def test_two_trainings_into_one_folder_at_once_one_is_refused(tmp_path) -> None:
    args = [sys.executable, "-m", "ssmgraph", "train", "lstm", "--task", "selective_copying", "-t", "seq_len=16", "-t", "n_memorize=2",
            "--set", "d_model=8", "--set", "hidden=8", "--set", "layers=1", "-b", "4", "-q", "--steps", "60", "--out", "run"]
    first = subprocess.Popen([*args, "--seed", "1"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "run" / "run.json").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run([*args, "--seed", "2", "--overwrite"], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    first.communicate(timeout=120)
    assert first.returncode == 0
    if second.returncode == 0:  # only if the first had finished already
        pytest.skip("the first run ended before the second started")
    assert second.returncode == 2 and "E410" in second.stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["config"]["seed"] == 1
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert len(steps) == len(set(steps))


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
    recipe.write_text(f"merge_method: linear\nmodels:\n  - {{name: a, checkpoint: {finished}}}\n  - {{name: b, checkpoint: {finished}}}\n")
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
        app, ["train", "lstm", "--task", "selective_copying", "-t", "seq_len=16", "-t", "n_memorize=2", "--set", "d_model=8",
              "--set", "hidden=8", "--set", "layers=1", "-b", "4", "-q", "--no-show", "--steps", "1", "--out", str(link), "--overwrite"],
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
