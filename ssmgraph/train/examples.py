"""Show what a trained model does on a few held-out examples (printed after training)."""

from __future__ import annotations

import torch
from rich.markup import escape
from rich.table import Table

from ssmgraph.graph.model import CompiledModel
from ssmgraph.train.tasks.base import IGNORE, Task


def _tokens(values: list[int]) -> str:
    return " ".join(str(v) for v in values)


@torch.no_grad()
def examples_table(model: CompiledModel, task: Task, count: int | None = None) -> Table:
    """A table of held-out inputs, targets and the model's predictions."""
    was_training = model.training
    model.eval()
    count = count or (12 if task.kind == "classify" else 3)
    batch = next(iter(task.eval_batches(count, "test")))
    device = next(model.parameters()).device  # a model trained on a GPU is still there
    with torch.no_grad():
        output = model(batch.inputs.to(device)).float().cpu()
    model.train(was_training)
    table = Table(title="held-out examples", show_lines=task.kind == "lm")
    if task.kind == "lm":
        for column in ("input (last 24 tokens)", "scored targets", "predictions", "right"):
            table.add_column(column, overflow="fold")
        predictions = output.argmax(-1)
        for i in range(batch.inputs.shape[0]):
            scored = batch.targets[i] != IGNORE
            want, got = batch.targets[i][scored].tolist(), predictions[i][scored].tolist()
            right = sum(a == b for a, b in zip(want, got))
            table.add_row(_tokens(batch.inputs[i][-24:].tolist()), _tokens(want), _tokens(got), f"{right}/{len(want)}")
    elif task.kind == "classify":
        labels, guesses = batch.targets.tolist(), output.argmax(-1).tolist()
        table.add_column("")
        for i in range(len(labels)):
            table.add_column(str(i), justify="center")
        table.add_row("label", *map(str, labels))
        table.add_row("predicted", *(escape(f"{g}{'✓' if g == y else '✗'}") for g, y in zip(guesses, labels)))
    else:
        for column in ("example", "target", "predicted"):
            table.add_column(column)
        for i, (target, guess) in enumerate(zip(batch.targets.tolist(), output.reshape(-1).tolist())):
            table.add_row(str(i), f"{target:.3f}", f"{guess:.3f}")
    return table
