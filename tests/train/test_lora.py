"""The ``lora`` setting: PEFT adapters on the blocks' linear layers train alone, checkpoints keep
them beside the frozen weights, and the merged model computes what the adapted one does."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import ssmgraph
from ssmgraph.folders import latest_checkpoint
from ssmgraph.train import TrainConfig, TrainingError, resume, train
from ssmgraph.train.lora import MERGED, lora_spec, target_modules
from ssmgraph.train.metrics import read_metrics

peft = pytest.importorskip("peft")

GPT = {"vocab": 10, "d_model": 16, "layers": 2, "heads": 2, "max_len": 16}
TASK = {"seq_len": 12, "n_memorize": 2, "vocab": 10}
LORA = {"r": 4, "alpha": 8}


def config(**changes) -> TrainConfig:
    base = {
        "task": "copying",
        "task_options": TASK,
        "steps": 4,
        "batch_size": 4,
        "lr": 1e-2,
        "warmup_steps": 1,
        "eval_interval": 4,
        "eval_size": 8,
        "log_interval": 1,
        "checkpoint_interval": 2,
        "lora": LORA,
    }
    return TrainConfig(**{**base, **changes})


@pytest.fixture
def base(tmp_path):
    torch.manual_seed(5)
    return ssmgraph.save(ssmgraph.build("gpt", **GPT), tmp_path / "base")


def test_only_adapters_train_and_the_merged_model_computes_the_adapted_one(tmp_path, base) -> None:
    run = tmp_path / "run"
    result = train(None, run, config(lora={**LORA, "merge": True}), init=base, progress=False)
    adapted = result.model
    trainable = [name for name, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".lora_")[0] for n in trainable} == {
        f"blocks.{i}.{layer}" for i in (0, 1) for layer in ("mix.qkv", "mix.out_proj", "ffn.fc1", "ffn.fc2")
    }
    stored = load_file(str(latest_checkpoint(run) / "model.safetensors"))
    assert "blocks.0.mix.qkv.lora_A" in stored and "blocks.0.mix.qkv.weight" in stored
    assert float(stored["blocks.0.mix.qkv.lora_scaling"]) == 2.0  # alpha / r

    frozen, start = ssmgraph.load(run, merge_lora=False).state_dict(), ssmgraph.load(base).state_dict()
    assert all(torch.equal(frozen[k], start[k]) for k in start)  # the base weights never moved
    merged = ssmgraph.load(run)
    assert not torch.equal(merged.state_dict()["blocks.0.mix.qkv.weight"], start["blocks.0.mix.qkv.weight"])
    tokens = torch.randint(0, 10, (3, 12), generator=torch.Generator().manual_seed(0))
    adapted.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(tokens), adapted(tokens), rtol=1e-5, atol=1e-5)
        for name, module in adapted.named_modules():  # PEFT's own merge gives the same weights
            if isinstance(module, peft.tuners.lora.Linear):
                module.merge()
                torch.testing.assert_close(merged.state_dict()[f"{name}.weight"], module.base_layer.weight, rtol=1e-6, atol=1e-6)
    written = ssmgraph.load(run / MERGED)  # merge: true wrote a plain model
    assert not any("lora" in k for k in load_file(str(run / MERGED / "model.safetensors")))
    assert all(torch.equal(v, merged.state_dict()[k]) for k, v in written.state_dict().items())
    assert json.loads((run / "run.json").read_text())["config"]["lora"]["merge"] is True


def test_resume_of_a_lora_run_is_exact(tmp_path, base, monkeypatch) -> None:
    from ssmgraph.train.trainer import Trainer

    cfg = config(steps=6, checkpoint_interval=3)
    train(None, tmp_path / "full", cfg, init=base, progress=False)
    real_step = Trainer.train_step

    def interrupted_after_four(self):
        if self.step == 4:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted_after_four)
    assert train(None, tmp_path / "part", cfg, init=base, progress=False).interrupted
    monkeypatch.setattr(Trainer, "train_step", real_step)
    resume(tmp_path / "part", progress=False)
    losses = [[r["loss"] for r in read_metrics(tmp_path / n) if r["split"] == "train"] for n in ("full", "part")]
    assert losses[0] == losses[1] and len(losses[0]) == 6 and losses[0][0] != losses[0][-1]
    a = load_file(str(latest_checkpoint(tmp_path / "full") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "part") / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_targets_and_bad_settings() -> None:
    model = ssmgraph.build("mamba", vocab=10, d_model=8, layers=2)
    default = target_modules(model, lora_spec(config(lora=LORA)))
    assert "blocks.0.mix.in_proj" in default and "blocks.0.mix.dt_proj" not in default  # its weight is read, not called
    assert target_modules(model, lora_spec(config(lora={"targets": ["blocks.1.mix.out_proj"]}))) == ["blocks.1.mix.out_proj"]
    with pytest.raises(TrainingError, match="reads the weight without calling the layer"):
        target_modules(model, lora_spec(config(lora={"targets": ["blocks.*.mix.*_proj"]})))
    with pytest.raises(TrainingError, match="'blocks.*.attn' matches no linear layer"):
        target_modules(model, lora_spec(config(lora={"targets": ["blocks.*.attn"]})))
    with pytest.raises(TrainingError, match="lora: unknown key 'rank'"):
        lora_spec(config(lora={"rank": 4}))
    with pytest.raises(TrainingError, match="lora.r: expected int"):
        lora_spec(config(lora={"r": 4.5}))
    with pytest.raises(TrainingError, match="lora does not go with ema"):
        lora_spec(config(ema=0.9))
