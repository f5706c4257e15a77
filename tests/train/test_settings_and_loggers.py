"""The newer train settings: located errors for their values, their table in docs/training.md,
the command-line flags that set them, and the metric loggers."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ssmgraph.cli import app
from ssmgraph.errors import BlueprintError
from ssmgraph.train import TrainConfig, TrainingError, resume, train
from ssmgraph.train.config import SCHEMA, config_from_text
from ssmgraph.train.loggers import register_logger
from ssmgraph.train.loop import Trainer
from ssmgraph.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
TASK = {"task": "selective_copying", "task_options": {"seq_len": 16, "n_memorize": 2}}
LSTM = {"d_model": 8, "layers": 1, "hidden": 8}
BASE = {**TASK, "batch_size": 4, "warmup_steps": 1, "eval_size": 8, "log_interval": 1}


def diagnostics(text: str) -> list[tuple[str, int, str, str]]:
    with pytest.raises(BlueprintError) as info:
        config_from_text(text, "train.yaml")
    return [(d.code, d.mark.line if d.mark else 0, d.path, d.help) for d in info.value.diagnostics]


def test_new_settings_give_located_errors() -> None:
    found = diagnostics(
        "acumulate: 2\n"
        "ema: 1.0\n"
        "keep_best: valid_los\n"
        "loggers: [csv, wandbb]\n"
        "early_stop:\n"
        "  metrc: valid_loss\n"
        "  patience: 0\n"
        "tbptt: -1\n"
    )
    assert [(code, line, path) for code, line, path, _ in found] == [  # in the order of the file
        ("E110", 1, "acumulate"),
        ("E112", 2, "ema"),
        ("E112", 3, "keep_best"),
        ("E112", 4, "loggers.1"),
        ("E111", 5, "early_stop.metric"),
        ("E110", 6, "early_stop.metrc"),
        ("E112", 7, "early_stop.patience"),
        ("E112", 8, "tbptt"),
    ]
    helps = {path: help for _, _, path, help in found}
    assert "did you mean 'accumulate'" in helps["acumulate"]
    assert "did you mean 'wandb'" in helps["loggers.1"]
    assert "did you mean 'metric'" in helps["early_stop.metrc"]
    config = config_from_text("early_stop: {metric: valid_accuracy}\nloggers: [csv]\nema: 0.999\n")
    assert config.early_stop == {"metric": "valid_accuracy"} and config.loggers == ["csv"] and config.ema == 0.999


def test_every_setting_is_in_the_docs_table() -> None:
    text = (ROOT / "docs" / "training.md").read_text()
    rows = {name for line in text.splitlines() if line.startswith("| `") for name in re.findall(r"`(\w+)`", line.split("|")[1])}
    assert [p.name for p in SCHEMA if p.name not in rows] == []
    assert all(p.doc for p in SCHEMA)


def test_a_config_built_in_python_is_checked_too(tmp_path) -> None:
    with pytest.raises(BlueprintError, match="early_stop.mode: 'low' is not 'min' or 'max'"):
        train(
            "lstm",
            tmp_path / "run",
            TrainConfig(**BASE, steps=1, early_stop={"metric": "valid_loss", "mode": "low"}),
            overrides=LSTM,
            progress=False,
        )


# ---- command-line flags ---------------------------------------------------------------------
def test_cli_flags_override_the_config_file(tmp_path) -> None:
    (tmp_path / "train.yaml").write_text("warmup_steps: 9\neval_interval: 9\naccumulate: 1\nsteps: 2\neval_size: 8\n")
    args = ["train", "lstm", "--task", "selective_copying", "-t", "seq_len=16", "-t", "n_memorize=2", "-q", "--no-show"]
    args += ["-b", "4", "--set", "d_model=8", "--set", "hidden=8", "--set", "layers=1", "-c", str(tmp_path / "train.yaml")]
    args += ["--warmup", "1", "--eval-every", "1", "--save-every", "2", "--accumulate", "2", "--precision", "fp32"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert (config["warmup_steps"], config["eval_interval"], config["checkpoint_interval"]) == (1, 1, 2)
    assert (config["accumulate"], config["precision"], config["steps"]) == (2, "fp32", 2)
    help_text = CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output
    for flag in ("--warmup", "--eval-every", "--save-every", "--accumulate", "--precision", "--accumulate 4"):
        assert flag in help_text
    again = CliRunner().invoke(app, ["train", "--resume", "--out", str(tmp_path / "run"), "--steps", "3", "--accumulate", "1"])
    assert again.exit_code != 0 and "drop --accumulate" in again.output  # --resume keeps the checkpoint's config
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["steps"] == 2


# ---- loggers --------------------------------------------------------------------------------
def run_with(tmp_path: Path, loggers: list[str], name: str = "run", **changes) -> Path:
    cfg = TrainConfig(**{**BASE, "steps": 4, "eval_interval": 2, "checkpoint_interval": 2, "loggers": loggers, **changes})
    train("lstm", tmp_path / name, cfg, overrides=LSTM, progress=False)
    return tmp_path / name


def csv_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_logger_writes_the_records_and_resume_drops_the_repeated_steps(tmp_path, monkeypatch) -> None:
    full = run_with(tmp_path, ["csv"], "full")
    rows = csv_rows(full)
    records = read_metrics(full)
    assert [(int(r["step"]), r["split"], float(r["loss"])) for r in rows] == [(r["step"], r["split"], r["loss"]) for r in records]
    assert {"step", "split", "loss", "accuracy", "lr", "tokens_per_s"} <= set(rows[0])
    real = Trainer.train_step

    def stop_at_three(self):
        if self.step == 3:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", stop_at_three)
    run_with(tmp_path, ["csv"], "part", checkpoint_interval=100)
    monkeypatch.setattr(Trainer, "train_step", real)
    resume(tmp_path / "part", progress=False)
    resumed = csv_rows(tmp_path / "part")
    assert [(r["step"], r["split"], r["loss"]) for r in resumed] == [(r["step"], r["split"], r["loss"]) for r in rows]


def test_a_third_party_logger_gets_every_record(tmp_path) -> None:
    seen: list[dict] = []

    class Mine:
        def log(self, record):
            seen.append(dict(record))

        def close(self):
            seen.append({"closed": True})

    register_logger("mine_for_test", lambda run_dir, config, step: Mine())
    run = run_with(tmp_path, ["mine_for_test"])
    assert seen[:-1] == read_metrics(run) and seen[-1] == {"closed": True}


def test_a_logger_whose_package_is_missing_says_how_to_install_it(tmp_path) -> None:
    try:
        import tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed")
    except ImportError:
        pass
    with pytest.raises(TrainingError, match=r"'tensorboard' needs the tensorboard package: `pip install tensorboard`"):
        run_with(tmp_path, ["tensorboard"])
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


@pytest.mark.slow  # wandb starts a service process
def test_wandb_offline(tmp_path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = run_with(tmp_path, ["wandb"])
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))


@pytest.mark.slow  # importing mlflow takes seconds
def test_mlflow_local_store(tmp_path, monkeypatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local file store: nothing to serve
    run = run_with(tmp_path, ["mlflow"])
    client = mlflow.tracking.MlflowClient()
    (found,) = client.search_runs(["0"])  # the default experiment
    history = client.get_metric_history(found.info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert [m.value for m in history] == pytest.approx([r["loss"] for r in read_metrics(run) if r["split"] == "train"])
    assert found.data.params["accumulate"] == "1" and found.info.run_name == "run"
