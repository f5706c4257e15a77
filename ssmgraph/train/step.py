"""The forward and backward passes of one optimizer step: micro-batches and TBPTT windows.

Every loss is a *sum* over scored targets divided by the scored count of the whole global
batch, so the gradients the passes add up are those of the global batch's mean loss, however
it is cut: into ``accumulate`` micro-batches (each with its own number of scored tokens), into
processes (DDP averages, hence the ``world_size`` factor), or into ``tbptt`` windows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from ssmgraph.graph.model import CompiledModel
from ssmgraph.train.errors import TrainingError
from ssmgraph.train.losses import batch_sums
from ssmgraph.train.tasks.base import IGNORE, Batch, Task


def scored_count(task: Task, batch: Batch) -> Tensor:
    """How many targets of ``batch`` the loss scores (tokens for lm tasks, sequences otherwise)."""
    return (batch.targets != IGNORE).sum() if task.kind == "lm" else torch.tensor(batch.targets.shape[0])


def micro_batches(batch: Batch, parts: int) -> list[Batch]:
    size = batch.inputs.shape[0] // parts
    return [Batch(batch.inputs[i * size : (i + 1) * size], batch.targets[i * size : (i + 1) * size]) for i in range(parts)]


def backward_passes(
    module: nn.Module,
    task: Task,
    local: Batch,
    denominator: Tensor,
    *,
    world_size: int,
    parts: int,
    window: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> Tensor:
    """Forward and backward over ``parts`` micro-batches of this process's ``local`` batch (and,
    with ``window``, over TBPTT windows of each), gradients added up; returns the summed
    [loss, correct, count] statistics. DDP synchronises only the last backward pass."""
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # summed where the step runs: no sync per pass
    pieces = [(part, span) for part in micro_batches(local, parts) for span in _spans(part, window)]
    for i, (part, span) in enumerate(pieces):
        sync = i == len(pieces) - 1
        with contextlib.nullcontext() if sync or not hasattr(module, "no_sync") else module.no_sync():
            inputs, targets = part.inputs.to(device), part.targets.to(device)
            if span is None:
                with autocast():
                    output = module(inputs)
            else:
                (start, stop), state = span
                with autocast():
                    output, new_state = module(inputs[:, start:stop], state[0])
                state[0] = tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, new_state)
                targets = targets[:, start:stop]
            sums = batch_sums(task.kind, output, targets, task.tolerance)
            (sums.loss / denominator * world_size).backward()
        totals += sums.as_tensor()
    return totals


def _spans(part: Batch, window: int) -> list[Any]:
    """[None] without TBPTT; else ((start, stop), shared state holder) per window of ``part``."""
    if window <= 0:
        return [None]
    length = part.inputs.shape[1]
    holder: list[Any] = [None]  # the state carried from one window to the next
    return [((start, min(start + window, length)), holder) for start in range(0, length, window)]


class ModelView(nn.Module):
    """A module that calls the model its own way. It holds the model's sub-modules under their own
    names, so parameter names (and DDP's view of them) are the model's."""

    def __init__(self, model: CompiledModel):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        self._model = [model]  # a list: not registered twice


class WithState(ModelView):
    """``module(inputs, state) -> (outputs, state)``: the model's ``forward_with_state`` as a
    module call (so DDP sees it)."""

    def forward(self, inputs: Tensor, state: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
        return self._model[0].forward_with_state(inputs, state=state)


def check_tbptt(model: CompiledModel, task: Task, window: int) -> None:
    """TBPTT needs per-position targets and a model whose every block carries a state."""
    if task.kind != "lm":
        raise TrainingError(
            f"tbptt: {window} needs per-position targets (a language-model task); task {task.label()} "
            f"scores one target per sequence: set tbptt: 0"
        )
    blockers = model._step_blockers()
    if blockers:
        raise TrainingError(
            f"tbptt: model {model.blueprint.name!r} cannot carry state across windows: {', '.join(blockers)} "
            "have no recurrent state (use SSM, LSTM or attention mixers, or set tbptt: 0)"
        )
