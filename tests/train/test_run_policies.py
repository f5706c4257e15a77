"""What a run does beside its steps: keep the best model, stop early, average the weights (EMA),
and continue all three bit for bit on --resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ssmgraph
from ssmgraph.train import TrainConfig, TrainingError, resume, train
from ssmgraph.train.evaluation import evaluate
from ssmgraph.train.fitting import make_task
from ssmgraph.train.loop import Trainer
from ssmgraph.train.metrics import read_metrics

TASK = {"task": "selective_copying", "task_options": {"seq_len": 16, "n_memorize": 2}}
LSTM = {"d_model": 8, "layers": 1, "hidden": 8}
REAL_STEP = Trainer.train_step
BASE = {**TASK, "batch_size": 4, "warmup_steps": 1, "eval_size": 8, "log_interval": 1, "keep_checkpoints": 10}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def interrupted_at(monkeypatch, step: int) -> None:
    real = Trainer.train_step

    def train_step(self):
        if self.step == step:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", train_step)


def scripted(values: dict[int, float]):
    """A held-out evaluation whose valid loss follows ``values`` by step (test loss 1)."""

    def fake(self, split="test"):
        return {"loss": values[self.step] if split == "valid" else 1.0, "accuracy": 0.0}

    return fake


def test_keep_best_saves_the_model_that_scored_best(tmp_path) -> None:
    cfg = TrainConfig(**BASE, steps=6, eval_interval=2, checkpoint_interval=6, keep_best="valid_loss", lr=3e-2)
    train("lstm", tmp_path / "run", cfg, overrides=LSTM, progress=False)
    evals = [r for r in read_metrics(tmp_path / "run") if r["split"] == "valid"]
    assert [r["step"] for r in evals] == [2, 4, 6]
    best = min(evals, key=lambda r: r["loss"])
    meta = json.loads((tmp_path / "run" / "best" / "meta.json").read_text())
    assert meta["best"] == {"step": best["step"], "metric": "valid_loss", "value": best["loss"]}
    model = ssmgraph.load(tmp_path / "run" / "best")  # a saved model; scoring it again gives the value
    again = evaluate(model, make_task(TASK["task"], TASK["task_options"]), 4, 8, "valid")
    assert again["loss"] == pytest.approx(best["loss"], rel=1e-6)


def test_early_stop_waits_patience_evaluations_and_resume_remembers(tmp_path, monkeypatch) -> None:
    losses = {1: 5.0, 2: 4.0, 3: 4.5, 4: 3.0, 5: 3.5, 6: 3.2, 7: 3.9, 8: 1.0, 9: 0.5}
    monkeypatch.setattr(Trainer, "evaluate", scripted(losses))
    stop = {"metric": "valid_loss", "patience": 3}
    cfg = TrainConfig(**BASE, steps=9, eval_interval=1, checkpoint_interval=100, early_stop=stop, keep_best="valid_loss")
    full = train("lstm", tmp_path / "full", cfg, overrides=LSTM, progress=False)
    assert full.stopped_early and full.step == 7  # best at 4; 5, 6, 7 do not improve
    assert json.loads((tmp_path / "full" / "best" / "meta.json").read_text())["best"]["step"] == 4
    interrupted_at(monkeypatch, 6)  # after 4 (best) and 5 (waited 1)
    part = train("lstm", tmp_path / "part", cfg, overrides=LSTM, progress=False)
    assert part.interrupted and part.step == 6
    monkeypatch.setattr(Trainer, "train_step", REAL_STEP)
    resumed = resume(tmp_path / "part", progress=False)
    assert resumed.stopped_early and resumed.step == 7
    assert resume(tmp_path / "part", steps=20, progress=False).step == 7  # a stopped run stays stopped
    assert weights(tmp_path / "part" / "best").keys() == weights(tmp_path / "full" / "best").keys()
    for key, value in weights(tmp_path / "full" / "best").items():
        assert torch.equal(value, weights(tmp_path / "part" / "best")[key])


def test_ema_is_the_average_of_the_weights_after_each_step(tmp_path) -> None:
    decay, steps = 0.75, 4
    cfg = TrainConfig(**BASE, steps=steps, eval_interval=100, checkpoint_interval=1, ema=decay, lr=3e-2)
    train("lstm", tmp_path / "run", cfg, overrides=LSTM, progress=False)
    torch.manual_seed(0)
    fitted = json.loads((tmp_path / "run" / "run.json").read_text())["overrides"]
    initial = ssmgraph.build("lstm", **fitted).state_dict()  # train() seeds the weights the same way
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))
    assert len(checkpoints) == steps
    average = {k: v.double() for k, v in initial.items()}
    for checkpoint in checkpoints:
        for key, value in weights(checkpoint).items():
            average[key] = decay * average[key] + (1 - decay) * value.double()
    ema = weights(tmp_path / "run" / "ema")
    assert json.loads((tmp_path / "run" / "ema" / "meta.json").read_text())["ema"] == {"decay": decay, "step": steps}
    for key, value in ema.items():
        torch.testing.assert_close(value.double(), average[key], rtol=1e-5, atol=1e-7)
    assert not torch.equal(ema["head.weight"], weights(checkpoints[-1])["head.weight"])


def test_ema_resumes_bit_for_bit_and_evaluation_scores_it(tmp_path, monkeypatch) -> None:
    cfg = TrainConfig(**BASE, steps=6, eval_interval=3, checkpoint_interval=3, ema=0.9, lr=3e-2)
    train("lstm", tmp_path / "full", cfg, overrides=LSTM, progress=False)
    interrupted_at(monkeypatch, 4)
    train("lstm", tmp_path / "part", cfg, overrides=LSTM, progress=False)
    monkeypatch.setattr(Trainer, "train_step", REAL_STEP)
    resume(tmp_path / "part", progress=False)
    for folder in ("ema", "checkpoints/step_00000006"):
        full, part = weights(tmp_path / "full" / folder), weights(tmp_path / "part" / folder)
        assert all(torch.equal(full[k], part[k]) for k in full)
    final_eval = [r for r in read_metrics(tmp_path / "full") if r["split"] == "eval"][-1]
    task = make_task(TASK["task"], TASK["task_options"])
    on_ema = evaluate(ssmgraph.load(tmp_path / "full" / "ema"), task, 4, 8, "test")
    assert final_eval["loss"] == pytest.approx(on_ema["loss"], rel=1e-6)


def test_an_ema_checkpoint_without_its_average_is_refused(tmp_path) -> None:
    cfg = TrainConfig(**BASE, steps=2, eval_interval=100, checkpoint_interval=1, ema=0.9)
    train("lstm", tmp_path / "run", cfg, overrides=LSTM, progress=False)
    path = tmp_path / "run" / "checkpoints" / "step_00000002" / "trainer.json"
    state = json.loads(path.read_text())
    state["trainer"]["__dict__"] = [pair for pair in state["trainer"]["__dict__"] if pair[0] != "ema"]
    path.write_text(json.dumps(state))
    with pytest.raises(TrainingError, match=r"trainer.json: no key 'trainer.ema'"):
        resume(tmp_path / "run", steps=3, progress=False)


def test_a_metric_on_a_split_the_task_lacks_is_refused_before_training(tmp_path) -> None:
    cfg = TrainConfig(task="digits", steps=1, batch_size=4, keep_best="valid_accuracy")
    pytest.importorskip("sklearn")
    with pytest.raises(TrainingError, match="keep_best: 'valid_accuracy' reads the held-out split 'valid'"):
        train("classifier", tmp_path / "run", cfg, overrides={"d_model": 8, "layers": 1}, progress=False)
    assert not (tmp_path / "run").exists()
