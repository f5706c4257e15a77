"""Held-out evaluation: loss, accuracy (and bits) on a task's fixed held-out set."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from ssmgraph.train.losses import batch_sums, summarize
from ssmgraph.train.tasks.base import Task


@torch.no_grad()
def evaluate(
    model: nn.Module, task: Task, batch_size: int, size: int, split: str = "test", autocast: Any = contextlib.nullcontext
) -> dict[str, float]:
    """Loss and accuracy on the task's fixed held-out set."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = None
    for batch in task.eval_batches(batch_size, split, size):
        with autocast():
            output = model(batch.inputs.to(device))
        sums = batch_sums(task.kind, output, batch.targets.to(device), task.tolerance)
        total = sums if total is None else total + sums
    model.train(was_training)
    assert total is not None
    metrics = summarize(task.kind, total.as_tensor())
    per_token = task.bytes_per_token(split) if task.kind == "lm" else None
    if per_token:
        metrics["bits_per_byte"] = metrics["bits"] / per_token
    return metrics
