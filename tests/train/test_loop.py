"""The training loop: resume bit for bit, atomic checkpoints, Ctrl-C, divergence, torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ssmgraph
from ssmgraph.errors import BlueprintError
from ssmgraph.folders import checkpoint_dirs, latest_checkpoint
from ssmgraph.registry.plugins import Registry, reset_registry
from ssmgraph.registry.specs import Param, TaskSpec
from ssmgraph.train import TrainConfig, TrainingError, resume, train
from ssmgraph.train.config import config_from_text
from ssmgraph.train.metrics import read_metrics
from ssmgraph.train.tasks.base import IGNORE, Batch, Task


class PreviousToken(Task):
    """Output the previous token: learnable by any causal model in a few steps."""

    kind = "lm"

    def __init__(self, vocab: int, seq_len: int):
        self.vocab_size = self.num_classes = vocab
        self.seq_len = seq_len

    def sample(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        x = torch.randint(0, self.vocab_size, (batch_size, self.seq_len), generator=generator)
        y = torch.full_like(x, IGNORE)
        y[:, 1:] = x[:, :-1]
        return Batch(x, y)


class TestTasks:
    """A plugin providing a task through the ``ssmgraph_tasks`` hook."""

    @ssmgraph.hookimpl
    def ssmgraph_tasks(self):
        return [
            TaskSpec(
                name="previous_token",
                doc="Predict the previous token.",
                params=(Param("vocab", int, 8, "vocabulary size", min=2), Param("seq_len", int, 12, "sequence length", min=2)),
                factory=lambda vocab, seq_len: PreviousToken(vocab, seq_len),
            )
        ]


@pytest.fixture(autouse=True)
def registry():
    reg = Registry(autoload=False)
    reg.register(TestTasks(), "test-tasks", "tests", "0")
    reg.collect()
    reset_registry(reg)
    yield reg
    reset_registry(None)


def config(**changes) -> TrainConfig:
    base = {
        "task": "previous_token",
        "steps": 6,
        "batch_size": 4,
        "lr": 3e-3,
        "warmup_steps": 2,
        "eval_interval": 3,
        "eval_size": 8,
        "log_interval": 1,
        "checkpoint_interval": 3,
        "keep_checkpoints": 5,
    }
    return TrainConfig(**{**base, **changes})


LSTM = {"d_model": 16, "layers": 1, "hidden": 16}


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run) if r["split"] == "train"]


def test_task_hook_registers_and_a_run_writes_everything(tmp_path) -> None:
    result = train("lstm", tmp_path / "run", config(), overrides=LSTM, progress=False)
    assert result.step == 6 and not result.interrupted
    run = tmp_path / "run"
    assert json.loads((run / "run.json").read_text())["overrides"]["vocab"] == 8  # fitted to the task
    assert [r["step"] for r in read_metrics(run) if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in read_metrics(run) if r["split"] == "eval"] == [3, 6]
    assert [p.name for p in checkpoint_dirs(run)] == ["step_00000003", "step_00000006"]
    model = ssmgraph.load(run)  # a run directory loads its latest checkpoint
    assert model(torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, 8)


def test_resume_gives_the_losses_of_an_uninterrupted_run(tmp_path, monkeypatch) -> None:
    cfg = config(steps=8, checkpoint_interval=4)
    train("lstm", tmp_path / "full", cfg, overrides=LSTM, progress=False)

    from ssmgraph.train.trainer import Trainer

    real_step = Trainer.train_step

    def interrupted_after_five(self):
        if self.step == 5:
            raise KeyboardInterrupt  # Ctrl-C between steps 5 and 6
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted_after_five)
    result = train("lstm", tmp_path / "part", cfg, overrides=LSTM, progress=False)
    assert result.interrupted and latest_checkpoint(tmp_path / "part").name == "step_00000005"
    monkeypatch.setattr(Trainer, "train_step", real_step)
    resume(tmp_path / "part", progress=False)
    assert losses(tmp_path / "part") == losses(tmp_path / "full")
    a, b = ssmgraph.load(tmp_path / "full").state_dict(), ssmgraph.load(tmp_path / "part").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_crash_during_checkpointing_leaves_the_last_good_one(tmp_path, monkeypatch) -> None:
    from ssmgraph.train import checkpoint

    class Killed(BaseException):
        """Stands for SIGKILL: nothing in the trainer may catch it."""

    real, calls = checkpoint.write_safetensors, []

    def dying_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint dies halfway through
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "write_safetensors", dying_save)
    with pytest.raises(Killed):
        train("lstm", tmp_path / "run", config(), overrides=LSTM, progress=False)
    run = tmp_path / "run"
    assert latest_checkpoint(run).name == "step_00000003"
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    ssmgraph.load(run)


def test_a_diverging_loss_stops_cleanly(tmp_path, monkeypatch) -> None:
    from ssmgraph.train import step

    real, steps = step.batch_sums, []

    def poisoned(kind, output, targets, tolerance=None):
        sums = real(kind, output, targets, tolerance)
        steps.append(1)
        if len(steps) == 5:
            sums.loss = sums.loss * float("nan")
        return sums

    monkeypatch.setattr(step, "batch_sums", poisoned)
    with pytest.raises(TrainingError, match="the loss became nan at step 5.*last good checkpoint is intact") as info:
        train("lstm", tmp_path / "run", config(eval_interval=100), overrides=LSTM, progress=False)
    assert info.value.code == "E500" and info.value.render().startswith("error[E500]: ")
    assert latest_checkpoint(tmp_path / "run").name == "step_00000003"


def test_existing_runs_are_not_overwritten(tmp_path) -> None:
    train("lstm", tmp_path / "run", config(steps=3), overrides=LSTM, progress=False)
    with pytest.raises(TrainingError, match="already holds a run; continue it with --resume"):
        train("lstm", tmp_path / "run", config(steps=3), overrides=LSTM, progress=False)


def test_model_and_task_must_fit(tmp_path) -> None:
    with pytest.raises(TrainingError, match="task needs per-position logits"):
        train("lstm", tmp_path / "run", config(), overrides={**LSTM, "vocab": 4}, progress=False)


def test_bad_configs_give_located_errors() -> None:
    with pytest.raises(BlueprintError) as info:
        config_from_text("stepz: 10\nlr: fast\nschedule: cosin\n", "train.yaml")
    rendered = [(d.code, d.mark.line, d.path) for d in info.value.diagnostics]
    assert rendered == [("E110", 1, "stepz"), ("E112", 2, "lr"), ("E112", 3, "schedule")]
    assert "did you mean 'steps'" in info.value.diagnostics[0].help
    assert config_from_text("lr: 1e-3\n").lr == 1e-3  # YAML 1.2 floats


def test_unknown_task_and_options(tmp_path) -> None:
    with pytest.raises(TrainingError, match="did you mean 'previous_token'"):
        train("lstm", tmp_path / "a", config(task="previous_tokens"), overrides=LSTM, progress=False)
    with pytest.raises(BlueprintError, match="(?s)has no option 'vocb'.*did you mean 'vocab'"):
        train("lstm", tmp_path / "b", config(task_options={"vocb": 3}), overrides=LSTM, progress=False)


def test_learning_rate_schedule() -> None:
    cfg = TrainConfig(lr=1.0, steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert cfg.lr_at(0) == pytest.approx(0.1) and cfg.lr_at(9) == pytest.approx(1.0)
    assert cfg.lr_at(10) == pytest.approx(1.0) and cfg.lr_at(110) == pytest.approx(0.1)
    assert cfg.lr_at(60) == pytest.approx(0.55)


# ---- in separate processes: Ctrl-C and torchrun (built-in tasks) ----------------------------------
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
CLI = [
    sys.executable,
    "-m",
    "ssmgraph",
    "train",
    "lstm",
    "--task",
    "copying",
    "-t",
    "seq_len=16",
    "-t",
    "n_memorize=4",
    "--set",
    "d_model=16",
    "--set",
    "hidden=16",
    "--set",
    "layers=1",
    "-b",
    "8",
    "--quiet",
]


def test_ctrl_c_saves_and_exits_cleanly(tmp_path) -> None:
    run = tmp_path / "run"
    # A test runner may ignore SIGINT, and a child inherits that: give the child the default.
    proc = subprocess.Popen(
        [*CLI, "--steps", "100000", "--out", str(run)],
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509 - no threads yet in the fresh child
    )
    try:
        deadline = time.time() + 600  # generous: a loaded machine starts slowly
        while time.time() < deadline and len(read_metrics(run)) < 3 and proc.poll() is None:
            time.sleep(0.2)
        assert len(read_metrics(run)) >= 3, "training did not start (or died) before the interrupt"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=300)  # saving on a loaded machine can be slow
    finally:
        proc.kill()  # never leave a 100,000-step run behind
    assert proc.returncode == 0, stderr
    assert "interrupted: saved step" in stderr and "Traceback" not in stderr
    step = int(latest_checkpoint(run).name.split("_")[1])
    assert step >= 3
    resumed = subprocess.run(
        [*CLI[:4], "--resume", "--out", str(run), "--steps", str(step + 2), "--quiet"],
        check=False,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert latest_checkpoint(run).name == f"step_{step + 2:08d}"


def test_two_process_gloo_run_matches_one_process(tmp_path) -> None:
    common = ["--steps", "4", "--seed", "3"]
    single = subprocess.run(
        [*CLI, *common, "--out", str(tmp_path / "one")], check=False, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert single.returncode == 0, single.stderr
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "ssmgraph",
        *CLI[3:],
    ]
    double = subprocess.run(
        [*torchrun, *common, "--out", str(tmp_path / "two")],
        check=False,
        env={**ENV, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert double.returncode == 0, double.stderr
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2
    torch.testing.assert_close(
        torch.tensor(losses(tmp_path / "two")), torch.tensor(losses(tmp_path / "one")), rtol=1e-5, atol=1e-6
    )


def test_ddp_trains_a_model_whose_tap_projections_get_no_gradient(tmp_path) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    from ssmgraph.train import distributed

    # A file store, not a TCP port: nothing another process holds can make it wait.
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1, timeout=timedelta(seconds=60)
    )
    try:
        model = ssmgraph.build("pair", model="transformer", d_model=8, vocab=4, heads=2, d_common=4, max_len=32)
        assert any(name.startswith("taps.") for name, _ in model.named_parameters())
        wrapped = distributed.wrap(model, distributed.DistInfo(0, 2, torch.device("cpu")))  # as under torchrun
        for _ in range(2):  # DDP reports unused parameters at the second step
            wrapped(torch.randint(0, 4, (2, 8))).sum().backward()
    finally:
        dist.destroy_process_group()
