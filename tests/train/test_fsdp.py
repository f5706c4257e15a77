"""``strategy: fsdp``: two CPU processes (gloo) sharding a model train as one process does on the
same global batch, and their checkpoints (full weights, one process's optimizer format) resume
under another number of processes."""

from __future__ import annotations

import copy
import multiprocessing
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ssmgraph
from ssmgraph.folders import CHECKPOINTS, LATEST
from ssmgraph.train import TrainConfig, TrainingError, resume, train
from ssmgraph.train.fsdp import layer_units
from ssmgraph.train.metrics import read_metrics

GPT = {"d_model": 16, "layers": 2, "heads": 2, "max_len": 16}
TASK = {"seq_len": 12, "n_memorize": 2, "vocab": 10}


def config(**changes) -> TrainConfig:
    base = {
        "task": "copying",
        "task_options": TASK,
        "steps": 4,
        "batch_size": 8,
        "lr": 1e-2,
        "warmup_steps": 1,
        "eval_interval": 2,
        "eval_size": 8,
        "log_interval": 1,
        "checkpoint_interval": 2,
        "keep_checkpoints": 5,
        "seed": 3,
        "strategy": "fsdp",
    }
    return TrainConfig(**{**base, **changes})


def _worker(rank: int, store: str, job: tuple[str, str]) -> None:
    """One of two processes: join a file-store process group (no port to collide), then train or resume."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=timedelta(seconds=120))
    try:
        kind, run = job
        if kind == "train":
            train("gpt", run, config(), overrides=GPT, progress=False)
        else:
            resume(run, progress=False)
    finally:
        dist.destroy_process_group()


def two_processes(tmp_path: Path, kind: str, run: Path) -> None:
    context = multiprocessing.get_context("spawn")
    store = tmp_path / f"store-{run.name}-{kind}"
    processes = [context.Process(target=_worker, args=(rank, str(store), (kind, str(run)))) for rank in (0, 1)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=240)
    assert [p.exitcode for p in processes] == [0, 0]


def losses(run: Path) -> torch.Tensor:
    return torch.tensor([r["loss"] for r in read_metrics(run) if r["split"] == "train"])


def assert_same_weights(a: Path, b: Path) -> None:
    one, two = ssmgraph.load(a).state_dict(), ssmgraph.load(b).state_dict()
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=key)


def back_to_step_2(run: Path, copy: Path) -> Path:
    """A copy of ``run`` whose latest checkpoint is step 2 (what a run stopped there leaves)."""
    shutil.copytree(run, copy)
    shutil.rmtree(copy / CHECKPOINTS / "step_00000004")
    (copy / CHECKPOINTS / LATEST).write_text("step_00000002")
    return copy


def test_layer_units_are_the_repeated_layers_blocks() -> None:
    model = ssmgraph.build("gpt", vocab=10, **GPT)
    units = layer_units(model)
    assert [[type(m).__name__ for m in unit] for unit in units] == [["LayerNorm", "Attention", "LayerNorm", "MLP"]] * 2
    inside = {id(p) for unit in units for m in unit for p in m.parameters()}
    assert id(model.get_submodule("embed").weight) not in inside  # tied to the head: the root's


def test_fsdp_refuses_settings_it_cannot_shard(tmp_path) -> None:
    from ssmgraph.train.fsdp import check_strategy

    check_strategy(config(ema=0.9), 1)  # one process shards nothing
    with pytest.raises(TrainingError, match="strategy fsdp does not go with checkpointing: True, ema: 0.9"):
        check_strategy(config(ema=0.9, checkpointing=True), 2)


def test_sharded_in_one_process_steps_and_saves_as_the_plain_model(tmp_path) -> None:
    """The fast variant: a one-process group, so the model is sharded into whole shards."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from ssmgraph.optim import param_groups
    from ssmgraph.train.fsdp import checkpoint_state, load_optimizer, shard

    def built() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = ssmgraph.build("mamba", vocab=10, d_model=8, layers=2)
        return model, torch.optim.AdamW(param_groups(model, lr=1e-2, weight_decay=0.1))

    def steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, seeds: range) -> None:
        for seed in seeds:
            tokens = torch.randint(0, 10, (2, 6), generator=torch.Generator().manual_seed(seed))
            optimizer.zero_grad()
            model(tokens).square().mean().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        plain, plain_optimizer = built()
        steps(plain, plain_optimizer, range(2))
        sharded, _ = built()
        shard(sharded)
        assert all(isinstance(p, DTensor) for p in sharded.parameters())
        optimizer = torch.optim.AdamW(param_groups(sharded, lr=1e-2, weight_decay=0.1))
        assert len(optimizer.param_groups) == len(plain_optimizer.param_groups)  # the SSM hints survive sharding
        steps(sharded, optimizer, range(2))
        weights, state = checkpoint_state(sharded, optimizer)
        plain_weights, plain_state = checkpoint_state(plain, plain_optimizer)
        assert weights.keys() == plain_weights.keys() and not isinstance(next(iter(weights.values())), DTensor)
        for key in weights:
            torch.testing.assert_close(weights[key], plain_weights[key], msg=key)
        assert [g["params"] for g in state["param_groups"]] == [g["params"] for g in plain_state["param_groups"]]
        for index, values in plain_state["state"].items():
            for name, value in values.items():
                torch.testing.assert_close(state["state"][index][name], value, msg=f"{index}.{name}")
        # one process's state loaded into a fresh sharded optimizer continues as the plain one does
        resumed, _ = built()
        resumed.load_state_dict(plain.state_dict())
        shard(resumed)
        resumed_optimizer = torch.optim.AdamW(param_groups(resumed, lr=1e-2, weight_decay=0.1))
        load_optimizer(resumed, resumed_optimizer, copy.deepcopy(plain_state))  # as read from a file: no shared tensors
        steps(plain, plain_optimizer, range(2, 4))
        steps(resumed, resumed_optimizer, range(2, 4))
        after = checkpoint_state(resumed, resumed_optimizer)[0]
        for key, value in checkpoint_state(plain, plain_optimizer)[0].items():
            torch.testing.assert_close(after[key], value, msg=key)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_fsdp_processes_match_one_and_resume_under_either(tmp_path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    train("gpt", one, config(), overrides=GPT, progress=False)
    two_processes(tmp_path, "train", two)
    torch.testing.assert_close(losses(two), losses(one), rtol=1e-5, atol=1e-6)
    assert_same_weights(one, two)
    state_one = load_file(str(one / CHECKPOINTS / "step_00000004" / "optimizer.safetensors"))
    state_two = load_file(str(two / CHECKPOINTS / "step_00000004" / "optimizer.safetensors"))
    assert state_one.keys() == state_two.keys()  # one process's format, gathered
    for key in state_one:
        torch.testing.assert_close(state_two[key], state_one[key], rtol=1e-4, atol=1e-6, msg=key)

    # two processes' step 2 resumed by one, one process's step 2 resumed by two: both end as the one-process run
    resume(back_to_step_2(two, tmp_path / "two-then-one"), progress=False)
    two_processes(tmp_path, "resume", back_to_step_2(one, tmp_path / "one-then-two"))
    for run in ("two-then-one", "one-then-two"):
        torch.testing.assert_close(losses(tmp_path / run), losses(one), rtol=1e-5, atol=1e-6)
        assert_same_weights(one, tmp_path / run)
