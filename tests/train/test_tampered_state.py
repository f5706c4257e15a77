"""A run whose stored files were damaged or tampered with (trainer.json, run.json, metrics.jsonl)
stops with an error naming the file and the key before training starts, never a traceback mid-run."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ssmgraph.cli import app
from ssmgraph.folders import checkpoint_dirs, latest_checkpoint
from ssmgraph.serialization import CheckpointError
from ssmgraph.train import TrainConfig, TrainingError, evaluate_run, resume, train
from ssmgraph.train.checkpoint import load_trainer_state
from ssmgraph.train.metrics import read_metrics

TINY = {"d_model": 16, "layers": 1, "hidden": 16}
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TrainConfig(
        task="selective_copying",
        task_options={"seq_len": 16, "n_memorize": 2},
        steps=2,
        batch_size=4,
        warmup_steps=1,
        eval_interval=100,
        eval_size=8,
        log_interval=1,
        checkpoint_interval=100,
    )
    run_dir = tmp_path_factory.mktemp("runs") / "done"
    train("lstm", run_dir, config, overrides=TINY, progress=False)
    return run_dir


@pytest.fixture
def done(finished: Path, tmp_path: Path) -> Path:
    """A finished 2-step run with one checkpoint, this test's own copy."""
    return Path(shutil.copytree(finished, tmp_path / "done"))


def _edit_json(path: Path, change: Callable[[Any], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _stored_config(meta: dict[str, Any]) -> list[list[Any]]:
    """The [key, value] pairs of the train config inside trainer.json's flattened trainer state."""
    return dict(meta["trainer"]["__dict__"])["config"]["__dict__"]


def _set_stored(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(meta: dict[str, Any]) -> None:
        pairs = _stored_config(meta)
        pairs[:] = [[k, value if k == key else v] for k, v in pairs]

    return change


def _drop_stored(key: str) -> Callable[[dict[str, Any]], None]:
    def change(meta: dict[str, Any]) -> None:
        pairs = _stored_config(meta)
        pairs[:] = [[k, v] for k, v in pairs if k != key]

    return change


def _add_stored(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda meta: _stored_config(meta).append([key, value])


# ---- trainer.json: the stored config is checked like a fresh one ------------------------------------
def test_cli_resume_refuses_a_stored_steps_that_is_not_a_number(done: Path) -> None:
    trainer_json = latest_checkpoint(done) / "trainer.json"
    _edit_json(trainer_json, _set_stored("steps", "abc"))
    metrics_before = (done / "metrics.jsonl").read_text()
    result = CliRunner().invoke(app, ["train", "--resume", "--out", str(done), "-q"])
    assert result.exit_code == 2, result.output
    assert (
        f"{trainer_json}: key 'config.steps': expected int, got str 'abc'" in result.output and "Traceback" not in result.output
    )
    assert "error[E500]" in result.output
    assert [p.name for p in checkpoint_dirs(done)] == ["step_00000002"] and (done / "metrics.jsonl").read_text() == metrics_before


@pytest.mark.parametrize(
    "change, problem",
    [
        (_drop_stored("task"), "missing key 'config.task'"),
        (_set_stored("task", ""), "key 'config.task' is empty"),
        (_set_stored("lr", -1.0), "key 'config.lr': -1.0 is below the minimum 0"),
        (_set_stored("batch_size", True), "key 'config.batch_size': expected int, got a boolean"),
        (_add_stored("stepz", 3), "key 'config.stepz': unknown setting 'stepz'"),
    ],
)
def test_resume_names_the_stored_key(done: Path, change: Callable[[dict[str, Any]], None], problem: str) -> None:
    trainer_json = latest_checkpoint(done) / "trainer.json"
    _edit_json(trainer_json, change)
    with pytest.raises(TrainingError) as info:
        resume(done, progress=False)
    assert info.value.code == "E500" and str(info.value).startswith(f"{trainer_json}: ") and problem in str(info.value)
    assert "unknown task" not in str(info.value)


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"step": ' + DEEP + "}", "nested deeper than 100 levels"),
        ('{"step": 1' + "0" * 100_000 + ', "optimizer": {}, "trainer": {}}', "an integer of 100001 digits"),
        ('{"step": 1e999, "optimizer": {}, "trainer": {}}', "overflows to infinity"),
        ('{"step": "2", "optimizer": {}, "trainer": {}}', "key 'step': expected integer, got string '2'"),
        ('{"step": -1, "optimizer": {}, "trainer": {}}', "key 'step': -1 is negative"),
        ('{"step": 2, "optimizer": [], "trainer": {}}', "key 'optimizer': expected object, got array"),
    ],
)
def test_trainer_json_beyond_limits_or_of_wrong_types(done: Path, text: str, problem: str) -> None:
    checkpoint = latest_checkpoint(done)
    (checkpoint / "trainer.json").write_text(text)
    with pytest.raises(CheckpointError) as info:
        load_trainer_state(checkpoint)
    assert (
        info.value.code == "E400"
        and str(info.value).startswith(f"{checkpoint / 'trainer.json'}: ")
        and problem in str(info.value)
    )


def test_trainer_json_rng_state_pointing_at_another_tensor(done: Path) -> None:
    checkpoint = latest_checkpoint(done)

    def swap(meta: dict[str, Any]) -> None:
        pairs = meta["trainer"]["__dict__"]
        float_key = next(iter(json.dumps(meta["optimizer"]).split('"__tensor__": "')[1:])).split('"')[0]
        pairs[:] = [[k, {"__tensor__": float_key} if k == "data_rng" else v] for k, v in pairs]

    _edit_json(checkpoint / "trainer.json", swap)
    with pytest.raises(CheckpointError, match="key 'trainer.data_rng': an RNG state is a uint8 tensor, not torch.float32"):
        load_trainer_state(checkpoint)


def test_optimizer_state_that_does_not_fit_the_model(done: Path) -> None:
    checkpoint = latest_checkpoint(done)

    def drop_groups(meta: dict[str, Any]) -> None:
        pairs = meta["optimizer"]["__dict__"]
        pairs[:] = [[k, [] if k == "param_groups" else v] for k, v in pairs]

    _edit_json(checkpoint / "trainer.json", drop_groups)
    with pytest.raises(TrainingError, match="trainer.json: the stored optimizer or RNG state does not fit"):
        resume(done, progress=False)


# ---- run.json: the same checks ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda record: record["config"].clear(), "missing keys 'config.task', 'config.task_options'"),
        (lambda record: record["config"].update(steps="abc"), "key 'config.steps': expected int, got str 'abc'"),
        (lambda record: record.update(extra=json.loads("[" * 50 + "]" * 50)), None),  # nesting within the limit is fine
    ],
)
def test_run_json_config_is_checked(done: Path, change: Callable[[dict[str, Any]], None], problem: str | None) -> None:
    _edit_json(done / "run.json", change)
    if problem is None:
        assert evaluate_run(done)["task"] == "selective_copying"
        return
    result = CliRunner().invoke(app, ["eval", str(done)])
    assert result.exit_code == 2 and f"{done / 'run.json'}: {problem}" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("text", ['{"config": ' + DEEP + "}", '{"world_size": ' + "7" * 100_000 + "}"])
def test_run_json_too_deep_or_huge(done: Path, text: str) -> None:
    (done / "run.json").write_text(text)
    with pytest.raises(TrainingError, match="run.json: cannot read the run record"):
        evaluate_run(done)


# ---- metrics.jsonl: a line too deep, too long or not of numbers is skipped like a half-written one -----
def test_damaged_metrics_lines_are_skipped(done: Path) -> None:
    with open(done / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"step": 3, "split": "train", "loss": ' + DEEP + "}\n")
        handle.write('{"step": ' + "9" * 100_000 + ', "split": "train", "loss": 1.0}\n')
        handle.write('{"step": 4, "split": "train", "loss": "low"}\n')
        handle.write('{"step": true, "split": "train", "loss": 1.0}\n')
    assert [r["step"] for r in read_metrics(done) if r["split"] == "train"] == [1, 2]
    assert CliRunner().invoke(app, ["plot", str(done), "-o", str(done / "plots")]).exit_code == 0
