"""End-to-end: `ssmgraph train / eval / plot / tasks / generate` through the CLI."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from ssmgraph.cli import app

SMALL = ["--set", "d_model=16", "--set", "hidden=16", "--set", "layers=1", "-b", "4", "--quiet"]


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_train_eval_plot_generate(tmp_path) -> None:
    out = tmp_path / "run"
    result = run("train", "lstm", "--task", "bytes", "-t", "seq_len=32", "--steps", "3", "--out", str(out), *SMALL)
    assert result.exit_code == 0, result.output
    assert "held-out loss" in result.output and "bits/token" in result.output
    evaluation = run("eval", str(out), "--json")
    assert evaluation.exit_code == 0, evaluation.output
    metrics = json.loads(evaluation.stdout)
    assert metrics["task"] == "bytes" and metrics["bits"] > 0
    plotted = run("plot", str(out))
    assert plotted.exit_code == 0, plotted.output
    assert (out / "loss.png").stat().st_size > 1000 and (out / "accuracy.png").is_file()
    sample = run("generate", str(out), "--prompt", "Alice", "-n", "5", "--temperature", "0")
    assert sample.exit_code == 0 and sample.stdout.startswith("Alice")


def test_train_shows_held_out_examples(tmp_path) -> None:
    result = run(
        "train",
        "lstm",
        "--task",
        "copying",
        "-t",
        "seq_len=16",
        "-t",
        "n_memorize=4",
        "--steps",
        "2",
        "--out",
        str(tmp_path / "r"),
        "--set",
        "d_model=16",
        "--set",
        "hidden=16",
        "-b",
        "4",
    )
    assert result.exit_code == 0, result.output
    assert "held-out examples" in result.output and "scored targets" in result.output


def test_overwrite_replaces_a_run(tmp_path) -> None:
    args = [
        "train",
        "lstm",
        "--task",
        "copying",
        "-t",
        "seq_len=16",
        "-t",
        "n_memorize=4",
        "--steps",
        "1",
        "--out",
        str(tmp_path / "r"),
        *SMALL,
    ]
    assert run(*args).exit_code == 0
    refused = run(*args)
    assert refused.exit_code == 2 and "already holds a run" in refused.output
    assert run(*args, "--overwrite").exit_code == 0


def test_user_errors_exit_2_with_a_location(tmp_path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("task: copying\nstep: 3\n")
    result = run("train", "lstm", "--config", str(config), "--out", str(tmp_path / "r"))
    assert result.exit_code == 2
    assert f"{config}:2:1: error[E110]: step: unknown setting 'step'" in result.output
    assert "did you mean 'steps'" in result.output and "Traceback" not in result.output
    no_task = run("train", "lstm", "--out", str(tmp_path / "r2"))
    assert no_task.exit_code == 2 and "no task" in no_task.output
    wrong_model = run("train", "lstm", "--task", "digits", "--out", str(tmp_path / "r3"))
    assert wrong_model.exit_code == 2 and "classifier" in wrong_model.output


def test_tasks_listing() -> None:
    listing = run("tasks", "--json")
    names = {t["name"] for t in json.loads(listing.stdout)}
    assert {"copying", "selective_copying", "induction_heads", "mqar", "adding", "parity", "listops", "digits", "bytes"} <= names
    one = run("tasks", "selective_copying")
    assert one.exit_code == 0 and "n_memorize" in one.stdout
