"""An exponential moving average (EMA) of the weights, ``ema: 0.999`` in the train config.

After every optimizer step each floating-point parameter's average moves towards it:
``avg = decay * avg + (1 - decay) * weight`` (starting from the initial weights). The averages
are part of each checkpoint's trainer state (so ``--resume`` continues them bit for bit) and
are written as a model of their own to ``RUN/ema/`` at every checkpoint; held-out evaluation
during training scores the averaged weights (see :meth:`WeightAverage.swapped`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor

from ssmgraph.graph.model import CompiledModel
from ssmgraph.serialization import write_model
from ssmgraph.train.errors import TrainingError

EMA_DIR = "ema"


class WeightAverage:
    """The moving averages of a model's floating-point parameters, by parameter name."""

    def __init__(self, model: CompiledModel, decay: float):
        self.model, self.decay = model, decay
        self.params = {name: p for name, p in model.named_parameters() if p.is_floating_point()}
        self.averages = {name: p.detach().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, param in self.params.items():
            self.averages[name].lerp_(param.detach(), 1.0 - self.decay)

    def state(self) -> dict[str, Tensor]:
        return self.averages

    def load(self, stored: Mapping[str, object], source: Path) -> None:
        """Take the averages a checkpoint stored, refusing ones that do not fit the model."""
        fix = "the checkpoint is damaged or from a run without the same model: delete it, or start again with --overwrite"
        if not isinstance(stored, Mapping) or set(stored) != set(self.averages):
            names = sorted(set(stored) ^ set(self.averages)) if isinstance(stored, Mapping) else []
            raise TrainingError(
                f"{source}: key 'trainer.ema' does not hold the model's parameters ({', '.join(names[:3])}); {fix}"
            )
        for name, value in stored.items():
            mine = self.averages[name]
            if not isinstance(value, Tensor) or value.shape != mine.shape or value.dtype != mine.dtype:
                raise TrainingError(f"{source}: key 'trainer.ema.{name}' does not fit the parameter {list(mine.shape)}; {fix}")
            mine.copy_(value)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own (bit for bit) after it."""
        with torch.no_grad():
            own = {name: p.detach().clone() for name, p in self.params.items()}
            for name, param in self.params.items():
                param.copy_(self.averages[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in self.params.items():
                    param.copy_(own[name])

    def save(self, run_dir: Path, step: int) -> Path:
        """Write the averaged model to RUN/ema/ (atomically: a kill leaves the previous one)."""
        with self.swapped():
            return write_model(self.model, run_dir / EMA_DIR, {"ema": {"decay": self.decay, "step": step}})
