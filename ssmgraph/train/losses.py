"""Loss and metrics for each kind of task target (see ssmgraph/train/tasks/base.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmgraph.train.tasks.base import IGNORE, Kind


@dataclass
class Sums:
    """Additive statistics of a batch: divide by ``count`` for means (all-reducible)."""

    loss: Tensor
    correct: Tensor
    count: Tensor

    def __add__(self, other: Sums) -> Sums:
        return Sums(self.loss + other.loss, self.correct + other.correct, self.count + other.count)

    def as_tensor(self) -> Tensor:
        return torch.stack([self.loss.detach().double(), self.correct.double(), self.count.double()])


def batch_sums(kind: Kind, output: Tensor, targets: Tensor, tolerance: float | None = None) -> Sums:
    """Summed loss, correct predictions and scored count for one batch."""
    if kind == "lm":
        logits = output.float().reshape(-1, output.shape[-1])
        flat = targets.reshape(-1)
        scored = flat != IGNORE
        loss = F.cross_entropy(logits, flat, ignore_index=IGNORE, reduction="sum")
        correct = ((logits.argmax(-1) == flat) & scored).sum()
        return Sums(loss, correct, scored.sum())
    if kind == "classify":
        logits = output.float()
        loss = F.cross_entropy(logits, targets, reduction="sum")
        return Sums(loss, (logits.argmax(-1) == targets).sum(), torch.tensor(targets.shape[0]))
    prediction = output.float().reshape(-1)
    loss = F.mse_loss(prediction, targets.float(), reduction="sum")
    tol = tolerance if tolerance is not None else 0.0
    return Sums(loss, ((prediction - targets).abs() <= tol).sum(), torch.tensor(targets.shape[0]))


def summarize(kind: Kind, totals: Tensor) -> dict[str, float]:
    """Means from all-reduced [loss, correct, count] sums."""
    loss, correct, count = (float(v) for v in totals)
    count = max(count, 1.0)
    out = {"loss": loss / count, "accuracy": correct / count}
    if kind == "lm":
        out["bits"] = out["loss"] / math.log(2)  # bits per token: bits per byte for byte-level text
    return out
