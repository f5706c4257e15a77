"""Fault injection, concurrent writers: a folder's lock refuses a second trainer and every other
writer (naming the holder, E410), a lock left by a killed process or a dead pid is taken over,
and of two trainings started into one folder at once, one is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_helpers import TINY, TRAIN_TINY, config
from typer.testing import CliRunner

from ssmgraph import folders
from ssmgraph.cli import app
from ssmgraph.folders import FolderBusyError, folder_lock, lock_file
from ssmgraph.train import train

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
    recipe.write_text(
        "merge_method: linear\nmodels:\n  - {name: a, blueprint: lstm, set: {d_model: 8}}\n  - {name: b, blueprint: lstm, set: {d_model: 8}}\n"
    )
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
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=False, capture_output=True, text=True
    ).stdout.strip()
    host = __import__("socket").gethostname()
    lock_file(target).write_text(json.dumps({"pid": int(dead), "host": host, "command": "ssmgraph train", "since": "then"}))
    with folder_lock(target):
        pass
    lock_file(target).write_text(json.dumps({"pid": os.getppid(), "host": host, "command": "ssmgraph merge", "since": "now"}))
    with pytest.raises(FolderBusyError, match="ssmgraph merge"), folder_lock(target):
        pass


def test_two_trainings_into_one_folder_at_once_one_is_refused(tmp_path) -> None:
    args = [sys.executable, "-m", "ssmgraph", *TRAIN_TINY, "--steps", "60", "--out", "run"]
    first = subprocess.Popen([*args, "--seed", "1"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "run" / "run.json").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run(
        [*args, "--seed", "2", "--overwrite"], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    first.communicate(timeout=120)
    assert first.returncode == 0
    if second.returncode == 0:  # only if the first had finished already
        pytest.skip("the first run ended before the second started")
    assert second.returncode == 2 and "E410" in second.stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["config"]["seed"] == 1
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"train"' in line
    ]
    assert len(steps) == len(set(steps))
