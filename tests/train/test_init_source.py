"""``train --init SOURCE``: a run starts from a saved model, a run's checkpoint or a Hugging Face
folder, records the source, and refuses overrides that would change a weight's shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import ssmgraph
from ssmgraph.cli import app
from ssmgraph.folders import latest_checkpoint
from ssmgraph.train import TrainConfig, TrainingError, resume, train
from ssmgraph.train.init_source import InitError, load_init, weights_hash
from ssmgraph.train.metrics import read_metrics

GPT = {"vocab": 10, "d_model": 16, "layers": 1, "heads": 2, "max_len": 16}
TASK = {"seq_len": 12, "n_memorize": 2, "vocab": 10}


def config(**changes) -> TrainConfig:
    base = {
        "task": "copying",
        "task_options": TASK,
        "steps": 4,
        "batch_size": 4,
        "lr": 3e-3,
        "warmup_steps": 1,
        "eval_interval": 4,
        "eval_size": 8,
        "log_interval": 1,
        "checkpoint_interval": 2,
    }
    return TrainConfig(**{**base, **changes})


@pytest.fixture
def source(tmp_path) -> Path:
    torch.manual_seed(7)
    return ssmgraph.save(ssmgraph.build("gpt", **GPT), tmp_path / "base")


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return ssmgraph.load(folder).state_dict()


def test_a_run_starts_from_the_saved_weights_and_records_them(tmp_path, source) -> None:
    run = tmp_path / "run"
    train(None, run, config(lr=0.0, steps=2), init=source, progress=False)  # lr 0: the weights stay the source's
    start, end = weights(source), weights(run)
    assert start.keys() == end.keys() and all(torch.equal(start[k], end[k]) for k in start)
    record = json.loads((run / "run.json").read_text())
    assert record["init"] == {"path": str(source.resolve()), "kind": "model", "sha256": weights_hash(ssmgraph.load(source))}
    assert record["blueprint"] is None
    trained = tmp_path / "trained"
    train(None, trained, config(), init=source, progress=False)
    assert not torch.equal(weights(trained)["embed.weight"], start["embed.weight"])


def test_a_run_folder_gives_its_latest_checkpoint(tmp_path, source) -> None:
    first = tmp_path / "first"
    train(None, first, config(), init=source, progress=False)
    start = load_init(first)
    assert start.kind == "run" and start.path == latest_checkpoint(first)
    assert start.sha256 == weights_hash(ssmgraph.load(first)) != weights_hash(ssmgraph.load(source))


def test_resume_of_an_initialised_run_is_exact(tmp_path, source, monkeypatch) -> None:
    from ssmgraph.train.trainer import Trainer

    cfg = config(steps=6, checkpoint_interval=3)
    train(None, tmp_path / "full", cfg, init=source, progress=False)
    real_step = Trainer.train_step

    def interrupted_after_four(self):
        if self.step == 4:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted_after_four)
    assert train(None, tmp_path / "part", cfg, init=source, progress=False).interrupted
    monkeypatch.setattr(Trainer, "train_step", real_step)
    resume(tmp_path / "part", progress=False)
    losses = [[r["loss"] for r in read_metrics(tmp_path / name) if r["split"] == "train"] for name in ("full", "part")]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    a, b = weights(tmp_path / "full"), weights(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_overrides_that_keep_the_shapes_apply(source) -> None:
    start = load_init(source, {"dropout": 0.25})
    dropouts = [m.dropout for m in start.model.modules() if type(m).__name__ == "Attention"]
    assert dropouts == [0.25]
    base = ssmgraph.load(source).state_dict()
    assert all(torch.equal(base[k], v) for k, v in start.model.state_dict().items())
    assert start.sha256 == weights_hash(ssmgraph.load(source))


def test_an_override_that_changes_a_shape_names_the_tensor(source) -> None:
    with pytest.raises(InitError, match=r"--set vocab=12 changes the shape .*embed\.weight \[10, 16\] -> \[12, 16\]") as info:
        load_init(source, {"vocab": 12})
    assert info.value.code == "E510"
    with pytest.raises(InitError, match="'layers' was resolved when the model was built"):
        load_init(source, {"layers": 3})
    with pytest.raises(InitError, match="did you mean 'dropout'"):
        load_init(source, {"dropuot": 0.1})


def test_the_source_must_fit_the_task_and_come_alone(tmp_path, source) -> None:
    with pytest.raises(TrainingError, match=r"\[batch, seq, >= 20\], but blueprint .gpt. outputs float\[batch, seq, 10\]"):
        train(None, tmp_path / "a", config(task_options={**TASK, "vocab": 20}), init=source, progress=False)
    with pytest.raises(TrainingError, match="positions only up to max_len 16"):
        train(None, tmp_path / "b", config(task_options={**TASK, "seq_len": 20}), init=source, progress=False)
    with pytest.raises(InitError, match="leave out the BLUEPRINT"):
        train("gpt", tmp_path / "c", config(), init=source, progress=False)
    with pytest.raises(InitError, match="not a saved model"):
        load_init(tmp_path)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_the_cli_trains_from_init(tmp_path, source) -> None:
    out = tmp_path / "run"
    args = ["train", "--init", str(source), "--task", "copying", "-t", "seq_len=12", "-t", "n_memorize=2"]
    result = CliRunner().invoke(app, [*args, "--steps", "2", "-b", "4", "--out", str(out), "--quiet", "--set", "dropout=0.1"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["overrides"] == {"dropout": 0.1}
    refused = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x"), "--quiet", "--set", "d_model=32"])
    assert refused.exit_code == 2 and "E510" in refused.output


def test_a_hugging_face_folder_is_imported_in_memory_and_its_files_carried(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from ssmgraph.interop import export_hf, import_hf

    config_hf = transformers.GPT2Config(
        vocab_size=10, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=None, eos_token_id=None, pad_token_id=3
    )
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config_hf).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text('{"model": "a tokenizer"}')
    before = sorted(p.name for p in (tmp_path / "hf").iterdir())
    run = tmp_path / "run"
    train(None, run, config(lr=0.0, steps=1), init=tmp_path / "hf", progress=False)
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == before  # nothing written into the source
    imported = ssmgraph.load(import_hf(tmp_path / "hf", tmp_path / "imported"))
    record = json.loads((run / "run.json").read_text())
    assert record["init"]["kind"] == "hf" and record["init"]["sha256"] == weights_hash(imported)
    end = weights(run)
    assert all(torch.equal(end[k], v) for k, v in imported.state_dict().items())

    # fine-tuned, then exported: the tokenizer file and the config's token ids come back
    tuned = tmp_path / "tuned"
    train(None, tuned, config(), init=tmp_path / "hf", progress=False)
    out = export_hf(tuned, tmp_path / "export")
    assert (out / "tokenizer.json").read_text() == '{"model": "a tokenizer"}'
    assert json.loads((out / "config.json").read_text())["pad_token_id"] == 3
    tokens = torch.randint(0, 10, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()(tokens).logits
        torch.testing.assert_close(theirs, ssmgraph.load(tuned).eval()(tokens), rtol=1e-5, atol=1e-5)
