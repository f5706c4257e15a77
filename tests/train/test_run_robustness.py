"""Runs and saved models survive mistakes: wrong paths, typos, interrupts, damaged files."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import ssmgraph
from ssmgraph.cli import app
from ssmgraph.folders import atomic_directory, latest_checkpoint
from ssmgraph.serialization import CheckpointError
from ssmgraph.train import TrainConfig, TrainingError, evaluate_run, fitting, resume, step, train, trainer
from ssmgraph.train.checkpoint import load_trainer_state
from ssmgraph.train.metrics import read_metrics

TINY = {"d_model": 16, "layers": 1, "hidden": 16}
TASK = ["--task", "selective_copying", "-t", "seq_len=16", "-t", "n_memorize=2"]
CLI_TINY = [*TASK, "-q", "-b", "4", "--set", "d_model=16", "--set", "hidden=16", "--set", "layers=1", "--no-show"]


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def config(**changes) -> TrainConfig:
    base = {
        "task": "selective_copying",
        "task_options": {"seq_len": 16, "n_memorize": 2},
        "steps": 8,
        "batch_size": 4,
        "warmup_steps": 2,
        "eval_interval": 100,
        "eval_size": 8,
        "log_interval": 1,
        "checkpoint_interval": 100,
        "keep_checkpoints": 5,
    }
    return TrainConfig(**{**base, **changes})


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"]


@pytest.fixture
def done(tmp_path) -> Path:
    """A finished 2-step run with one checkpoint."""
    train("lstm", tmp_path / "done", config(steps=2), overrides=TINY, progress=False)
    return tmp_path / "done"


# ---- 1. build --out replaces only a saved model ----------------------------------------------------
def test_build_out_keeps_a_directory_of_other_files(tmp_path) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    result = run("build", "lstm", "--set", "d_model=16", "--out", folder)
    assert result.exit_code == 2 and "not a saved model" in result.output and "Traceback" not in result.output
    assert (folder / "notes.txt").read_text() == "mine"


def test_build_out_keeps_a_file(tmp_path) -> None:
    target = tmp_path / "afile"
    target.write_text("mine")
    result = run("build", "lstm", "--set", "d_model=16", "--out", target)
    assert result.exit_code == 2 and "is a file" in result.output
    assert target.read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_build_out_replaces_a_saved_model(tmp_path) -> None:
    target = tmp_path / "model"
    assert run("build", "lstm", "--set", "d_model=16", "--out", target).exit_code == 0
    assert run("build", "lstm", "--set", "d_model=8", "--out", target).exit_code == 0
    assert ssmgraph.load(target).state_dict()["embed.weight"].shape[1] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_directory_replaces_a_file_without_leftovers(tmp_path) -> None:
    target = tmp_path / "out"
    target.write_text("old")
    with atomic_directory(target) as folder:
        (folder / "x").write_text("new")
    assert (target / "x").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_save_refuses_a_directory_of_other_files(tmp_path) -> None:
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "data.bin").write_bytes(b"1")
    with pytest.raises(CheckpointError, match="not a saved model"):
        ssmgraph.save(ssmgraph.build("lstm", d_model=8), folder)
    assert (folder / "data.bin").read_bytes() == b"1"


# ---- 2. train --overwrite checks the new run before deleting the old one ---------------------------
def test_overwrite_with_a_typo_keeps_the_old_run(done) -> None:
    result = run("train", "lstm", "--task", "selective_copyng", "--out", done, "--overwrite", "-q")
    assert result.exit_code == 2 and "unknown task" in result.output
    assert latest_checkpoint(done) is not None and (done / "run.json").is_file()
    result = run("train", "no_such_blueprint", *CLI_TINY, "--out", done, "--overwrite")
    assert result.exit_code == 2 and latest_checkpoint(done) is not None


def test_overwrite_replaces_the_run(done) -> None:
    result = run("train", "lstm", *CLI_TINY, "--steps", "1", "--out", done, "--overwrite")
    assert result.exit_code == 0, result.output
    assert latest_checkpoint(done).name == "step_00000001"


# ---- 3. Ctrl-C inside a step still resumes exactly --------------------------------------------------
def test_ctrl_c_inside_a_step_resumes_exactly(tmp_path, monkeypatch) -> None:
    train("lstm", tmp_path / "full", config(), overrides=TINY, progress=False)
    real_run, forwards = trainer.Trainer.run, []

    def run_interrupted_in_forward(self):
        def hook(module, inputs):
            if module.training:
                forwards.append(1)
                if len(forwards) == 5:  # Ctrl-C lands in step 5's forward pass, after its batch was drawn
                    raise KeyboardInterrupt

        handle = self.model.register_forward_pre_hook(hook)
        try:
            return real_run(self)
        finally:
            handle.remove()

    monkeypatch.setattr(trainer.Trainer, "run", run_interrupted_in_forward)
    result = train("lstm", tmp_path / "part", config(), overrides=TINY, progress=False)
    assert result.interrupted and result.step == 4
    monkeypatch.setattr(trainer.Trainer, "run", real_run)
    resume(tmp_path / "part", progress=False)
    assert losses(tmp_path / "part") == losses(tmp_path / "full")


# ---- 4. a --steps extension holds on the next plain --resume ----------------------------------------
def test_extended_total_survives_a_plain_resume(tmp_path, monkeypatch) -> None:
    train("lstm", tmp_path / "run", config(steps=2), overrides=TINY, progress=False)
    real_step = trainer.Trainer.train_step

    def interrupted_at_four(self):
        if self.step == 4:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(trainer.Trainer, "train_step", interrupted_at_four)
    assert resume(tmp_path / "run", steps=6, progress=False).step == 4
    monkeypatch.setattr(trainer.Trainer, "train_step", real_step)
    assert resume(tmp_path / "run", progress=False).step == 6


# ---- 5. eval -t overrides the run's task options one by one -----------------------------------------
def test_eval_task_options_override_one_by_one(done, monkeypatch) -> None:
    seen = []
    real = trainer.make_task
    monkeypatch.setattr(trainer, "make_task", lambda name, options: seen.append(dict(options)) or real(name, options))
    evaluate_run(done, options={"n_memorize": 3})
    assert seen == [{"seq_len": 16, "n_memorize": 3}]


# ---- 6. clear errors instead of tracebacks ----------------------------------------------------------
def test_out_paths_that_are_files(tmp_path, done) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for out in (afile, afile / "run"):
        result = run("train", "lstm", *CLI_TINY, "--out", out)
        assert result.exit_code == 2 and "choose another --out" in result.output and "Traceback" not in result.output
    result = run("plot", done, "-o", afile)
    assert result.exit_code == 2 and "give another --out" in result.output
    assert afile.read_text() == "mine"


@pytest.mark.parametrize(
    "text, problem", [('{"blueprint": "lst', "cannot read the run record"), ("{}", "not a run record (no 'config' mapping)")]
)
def test_damaged_run_json(done, text, problem) -> None:
    (done / "run.json").write_text(text)
    result = run("eval", done)
    assert result.exit_code == 2 and f"{done / 'run.json'}: {problem}" in result.output and "Traceback" not in result.output


def test_a_kill_while_writing_run_json_leaves_no_half_file(tmp_path, monkeypatch) -> None:
    class Killed(BaseException):
        """Stands for SIGKILL."""

    real = Path.write_text

    def dying(self, text, *args, **kwargs):
        if "run.json" in self.name:
            real(self, text[:10], *args, **kwargs)
            raise Killed
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", dying)
    with pytest.raises(Killed):
        train("lstm", tmp_path / "run", config(), overrides=TINY, progress=False)
    assert not (tmp_path / "run" / "run.json").exists()


def test_a_half_written_metrics_line_is_skipped(done) -> None:
    with open(done / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"step": 3, "split": "tr')  # killed mid-append
    assert [r["step"] for r in read_metrics(done) if r["split"] == "train"] == [1, 2]
    assert run("plot", done).exit_code == 0
    assert resume(done, steps=3, progress=False).step == 3
    assert [r["step"] for r in read_metrics(done) if r["split"] == "train"] == [1, 2, 3]


@pytest.mark.parametrize(
    "name, content",
    [
        ("optimizer.safetensors", b"garbage"),
        ("trainer.json", b"{}"),
        ("trainer.json", b'{"step": 2, "optimizer": {}, "trainer": {}}'),
    ],
)
def test_damaged_training_state(done, name, content) -> None:
    checkpoint = latest_checkpoint(done)
    (checkpoint / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=str(checkpoint / name).replace("\\", "\\\\")) as info:
        load_trainer_state(checkpoint)
    assert info.value.code == "E400"
    result = run("train", "--resume", "--out", done, "--steps", "3", "-q")
    assert result.exit_code == 2 and "error[E400]" in result.output and "Traceback" not in result.output


# ---- 7. token ids and lengths must fit the embeddings -----------------------------------------------
def test_task_vocabulary_larger_than_the_embedding() -> None:
    model = ssmgraph.build("token_classifier", vocab=4, classes=10, d_model=8, layers=1)
    with pytest.raises(TrainingError, match="embeds only 4 tokens"):
        fitting.check_compatible(model, fitting.make_task("listops", {"seq_len": 16}))


def test_task_longer_than_the_position_embedding() -> None:
    model = ssmgraph.build("gpt", d_model=16, layers=1, heads=2, max_len=8)
    with pytest.raises(TrainingError, match="max_len 8"):
        fitting.check_compatible(model, fitting.make_task("selective_copying", {"seq_len": 16, "n_memorize": 2}))


# ---- 8. generate stops at the learned positions up front --------------------------------------------
def test_generate_past_max_len(tmp_path) -> None:
    ssmgraph.save(ssmgraph.build("gpt", d_model=16, layers=1, heads=2, max_len=16), tmp_path / "lm")
    result = run("generate", tmp_path / "lm", "-p", "the", "-n", "20")
    assert result.exit_code == 2 and "max_len 16" in result.output and "at most -n 14" in result.output
    assert run("generate", tmp_path / "lm", "-p", "the", "-n", "14").exit_code == 0  # the 17th byte needs no position


# ---- 9. a run that stopped before its first checkpoint ----------------------------------------------
def test_divergence_before_the_first_checkpoint(tmp_path, monkeypatch) -> None:
    real = step.batch_sums

    def poisoned(kind, output, targets, tolerance=None):
        sums = real(kind, output, targets, tolerance)
        sums.loss = sums.loss * float("nan")
        return sums

    monkeypatch.setattr(step, "batch_sums", poisoned)
    with pytest.raises(TrainingError) as info:
        train("lstm", tmp_path / "run", config(), overrides=TINY, progress=False)
    assert "intact" not in str(info.value) and "--overwrite" in str(info.value)
    with pytest.raises(TrainingError, match="before its first checkpoint.*--overwrite"):
        train("lstm", tmp_path / "run", config(), overrides=TINY, progress=False)
    with pytest.raises(TrainingError, match="before its first checkpoint.*--overwrite"):
        resume(tmp_path / "run", progress=False)


# ---- 10. split names are checked --------------------------------------------------------------------
def test_unknown_split(done) -> None:
    result = run("eval", done, "--split", "bogus")
    assert result.exit_code == 2 and "not 'bogus'" in result.output
    assert run("eval", done, "--split", "valid").exit_code == 0


def test_train_refuses_a_folder_of_other_files_so_overwrite_never_deletes_them(tmp_path) -> None:
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    for extra in ([], ["--overwrite"]):
        result = run("train", "lstm", *CLI_TINY, "--steps", "1", "--out", folder, *extra)
        assert result.exit_code == 2 and "holds other files, not a training run" in result.output
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_cli_mistakes_name_the_right_option_and_path(tmp_path) -> None:
    bad_option = run("train", "lstm", "--task", "bytes", "-t", "seq_len", "--out", tmp_path / "r")
    assert (
        bad_option.exit_code == 2
        and "-t 'seq_len' must read name=value" in bad_option.output
        and "e.g. -t seq_len=256" in bad_option.output
    )
    missing = run("eval", tmp_path / "nothing")
    assert missing.exit_code == 2 and "no such run or model folder" in missing.output
    infinite = run("train", "lstm", *CLI_TINY, "--lr", "inf", "--out", tmp_path / "lr")
    assert infinite.exit_code == 2 and "not a finite number" in infinite.output and not (tmp_path / "lr").exists()


def test_fit_errors_name_the_task_by_its_name(tmp_path) -> None:
    result = run("train", "classifier", "--task", "bytes", "--steps", "1", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "task 'bytes' (lm: tokens < 256" in result.output
