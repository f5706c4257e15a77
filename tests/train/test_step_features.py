"""What one training step computes: gradient accumulation, activation checkpointing, truncated
BPTT and torch.compile give the gradients (and losses) of the plain step, or the truncated
gradient a step-by-step loop computes."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_map

import ssmgraph
from ssmgraph.train import TrainConfig, TrainingError, train
from ssmgraph.train.metrics import read_metrics
from ssmgraph.train.recompute import Recomputed
from ssmgraph.train.step import WithState, backward_passes
from ssmgraph.train.tasks.base import IGNORE, Batch, Task

TASK = {"task": "selective_copying", "task_options": {"seq_len": 16, "n_memorize": 2}}
LSTM = {"d_model": 8, "layers": 1, "hidden": 8}


class Tokens(Task):
    """A stand-in language-model task for the unit tests (only its kind and tolerance are read)."""

    kind = "lm"


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def masked_batch(vocab: int, batch: int, length: int, seed: int = 0) -> Batch:
    """Targets with a different number of scored tokens in every row (1 .. length)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (batch, length), generator=g)
    y = torch.randint(0, vocab, (batch, length), generator=g)
    for row in range(batch):
        y[row, (row * 5) % length + 1 :] = IGNORE
    return Batch(x, y)


def passes(model: torch.nn.Module, batch: Batch, *, parts: int = 1, window: int = 0) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    count = (batch.targets != IGNORE).sum()
    return backward_passes(
        model,
        Tokens(),
        batch,
        count,
        world_size=1,
        parts=parts,
        window=window,
        device=torch.device("cpu"),
        autocast=contextlib.nullcontext,
    )


# ---- gradient accumulation ------------------------------------------------------------------
def test_accumulated_gradients_are_those_of_the_whole_batch_mean() -> None:
    torch.manual_seed(0)
    model = ssmgraph.build("lstm", vocab=11, **LSTM)
    batch = masked_batch(11, 8, 12)
    # the reference: one batch, mean cross-entropy over its scored tokens
    model.zero_grad(set_to_none=True)
    logits = model(batch.inputs)
    F.cross_entropy(logits.reshape(-1, 11), batch.targets.reshape(-1), ignore_index=IGNORE).backward()
    reference = grads(model)
    totals = passes(model, batch, parts=4)
    assert int(totals[2]) == int((batch.targets != IGNORE).sum())
    for name, grad in grads(model).items():
        torch.testing.assert_close(grad, reference[name], rtol=1e-5, atol=1e-7)
    # a mean per micro-batch (then averaged) is not the same update on this batch
    model.zero_grad(set_to_none=True)
    for part in range(4):
        rows = slice(2 * part, 2 * part + 2)
        out = model(batch.inputs[rows])
        loss = F.cross_entropy(out.reshape(-1, 11), batch.targets[rows].reshape(-1), ignore_index=IGNORE) / 4
        loss.backward()
    assert any(not torch.allclose(g, reference[n], rtol=1e-3, atol=1e-6) for n, g in grads(model).items())


def test_accumulate_trains_like_one_batch_and_must_divide_it(tmp_path) -> None:
    base = {**TASK, "steps": 3, "batch_size": 8, "warmup_steps": 1, "eval_interval": 3, "eval_size": 8, "log_interval": 1}
    one = train("lstm", tmp_path / "one", TrainConfig(**base), overrides=LSTM, progress=False)
    four = train("lstm", tmp_path / "four", TrainConfig(**base, accumulate=4), overrides=LSTM, progress=False)
    losses = [[r["loss"] for r in read_metrics(r.run_dir) if r["split"] == "train"] for r in (one, four)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for a, b in zip(one.model.parameters(), four.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(TrainingError, match="batch_size 8 must be divisible by accumulate 3"):
        train("lstm", tmp_path / "three", TrainConfig(**base, accumulate=3), overrides=LSTM, progress=False)


# ---- activation checkpointing ---------------------------------------------------------------
def test_checkpointed_layers_give_the_same_gradients_and_are_recomputed() -> None:
    torch.manual_seed(0)
    model = ssmgraph.build("gpt", vocab=11, d_model=16, layers=3, heads=2, max_len=16)
    batch = masked_batch(11, 4, 12)
    passes(model, batch)
    reference = grads(model)
    recomputed = Recomputed(model)
    assert [u.layer for u in recomputed.units if u.layer] == ["blocks.0", "blocks.1", "blocks.2"]
    assert [n for n, _ in recomputed.named_parameters()] == [n for n, _ in model.named_parameters()]
    calls = []
    model.get_submodule("blocks.1.mix").register_forward_pre_hook(lambda *args: calls.append(1))
    passes(recomputed, batch)
    assert len(calls) == 2  # the forward, and the recomputation in the backward pass
    for name, grad in grads(model).items():
        torch.testing.assert_close(grad, reference[name], rtol=1e-6, atol=1e-7)


def test_checkpointing_needs_a_repeated_layer() -> None:
    with pytest.raises(TrainingError, match="no repeated layers"):
        Recomputed(ssmgraph.build("lstm", vocab=11, **LSTM))


# ---- truncated BPTT -------------------------------------------------------------------------
def stepwise_truncated(model, batch: Batch, window: int) -> dict[str, torch.Tensor]:
    """The reference: the model advanced one token at a time (its recurrent ``step``), the state
    cut from the graph every ``window`` tokens, the summed loss divided by the scored count."""
    model.zero_grad(set_to_none=True)
    state = model.init_state(batch.inputs.shape[0], dtype=torch.float64)
    total = 0.0
    for t in range(batch.inputs.shape[1]):
        if t % window == 0:
            state = tree_map(lambda s: s.detach() if isinstance(s, torch.Tensor) else s, state)
        logits, state = model.step(batch.inputs[:, t], state=state)
        total = total + F.cross_entropy(logits, batch.targets[:, t], ignore_index=IGNORE, reduction="sum")
    (total / (batch.targets != IGNORE).sum()).backward()
    return grads(model)


@pytest.mark.parametrize(
    "blueprint, args", [("lstm", LSTM), pytest.param("mamba", {"d_model": 8, "layers": 1}, marks=pytest.mark.slow)]
)
def test_tbptt_gradient_is_the_truncated_one(blueprint, args) -> None:
    torch.manual_seed(0)
    model = ssmgraph.build(blueprint, vocab=11, **args).double()
    batch = masked_batch(11, 3, 12)
    passes(model, batch)
    full = grads(model)
    passes(WithState(model), batch, window=12)  # one window: the full gradient
    for name, grad in grads(model).items():  # (the loss is taken in fp32, as in training)
        torch.testing.assert_close(grad, full[name], rtol=1e-6, atol=1e-9)
    truncated = stepwise_truncated(model, batch, 5)
    passes(WithState(model), batch, window=5, parts=3)
    mine = grads(model)
    for name, grad in mine.items():
        torch.testing.assert_close(grad, truncated[name], rtol=1e-5, atol=1e-8)
    assert any(not torch.allclose(g, full[n], rtol=1e-2, atol=1e-5) for n, g in mine.items())  # truncation changed it


def test_tbptt_refuses_a_block_without_state(tmp_path) -> None:
    blueprint = tmp_path / "bidi.yaml"
    blueprint.write_text(
        (ssmgraph.blueprint.find_blueprint("gpt").read_text())
        .replace("causal: true", "causal: false")
        .replace("name: gpt", "name: bidi")
    )
    cfg = TrainConfig(**TASK, steps=1, batch_size=2, tbptt=4)
    with pytest.raises(TrainingError, match=r"tbptt: model 'bidi' cannot carry state.*blocks\.0\.mix \(mix\.attention\)"):
        train(blueprint, tmp_path / "run", cfg, overrides={"d_model": 8, "layers": 1, "heads": 2}, progress=False)


def test_tbptt_run_trains(tmp_path) -> None:
    cfg = TrainConfig(**TASK, steps=2, batch_size=4, tbptt=4, accumulate=2, eval_interval=2, eval_size=8)
    result = train("lstm", tmp_path / "run", cfg, overrides=LSTM, progress=False)
    assert result.step == 2 and all(r["loss"] > 0 for r in read_metrics(tmp_path / "run"))


# ---- torch.compile --------------------------------------------------------------------------
@pytest.mark.slow
def test_compiled_training_gives_the_same_losses(tmp_path) -> None:
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is unavailable")
    base = {**TASK, "steps": 2, "batch_size": 4, "warmup_steps": 1, "eval_interval": 2, "eval_size": 8, "log_interval": 1}
    plain = train("lstm", tmp_path / "plain", TrainConfig(**base), overrides=LSTM, progress=False)
    try:
        compiled = train("lstm", tmp_path / "compiled", TrainConfig(**base, compile=True), overrides=LSTM, progress=False)
    except Exception as exc:  # noqa: BLE001 - no C++ toolchain for inductor on this machine
        pytest.skip(f"torch.compile cannot run here: {type(exc).__name__}")
    losses = [[r["loss"] for r in read_metrics(r.run_dir) if r["split"] == "train"] for r in (plain, compiled)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
