"""Keep-best and early stopping: what the trainer does with each held-out evaluation.

``keep_best: valid_loss`` writes the model to ``RUN/best/`` (atomically) whenever the metric
improves on its best value so far; ``early_stop: {metric, patience, mode}`` ends the run once
the metric has gone ``patience`` evaluations without improving. Both remember their state in
every checkpoint, so a resumed run keeps, waits and stops as an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ssmgraph.graph.model import CompiledModel
from ssmgraph.serialization import write_model
from ssmgraph.train.config import TrainConfig
from ssmgraph.train.errors import DAMAGED, TrainingError
from ssmgraph.train.settings import mode_of, split_of

BEST_DIR = "best"


def better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


class BestPolicy:
    """The keep-best metric's best value, and the early-stop metric's best value and wait."""

    def __init__(self, config: TrainConfig):
        self.keep_metric = config.keep_best or None
        stop = config.early_stop
        self.stop_metric: str | None = stop.get("metric")
        self.patience: int = stop.get("patience", 3)
        self.stop_mode = mode_of(self.stop_metric, stop.get("mode")) if self.stop_metric else "min"
        same = self.keep_metric == self.stop_metric
        self.keep_mode = self.stop_mode if same else (mode_of(self.keep_metric) if self.keep_metric else "min")
        self.kept: float | None = None
        self.best: float | None = None
        self.waited = 0

    @property
    def splits(self) -> set[str]:
        """The held-out splits the metrics read."""
        return {split_of(m) for m in (self.keep_metric, self.stop_metric) if m}

    @property
    def stopped(self) -> bool:
        return self.stop_metric is not None and self.waited >= self.patience

    def observe(self, metrics: Mapping[str, float]) -> bool:
        """Take one evaluation (``valid_loss`` etc.); True when the keep-best model should be saved."""
        save = False
        if self.keep_metric is not None:
            value = metrics[self.keep_metric]
            if better(value, self.kept, self.keep_mode):
                self.kept, save = value, True
        if self.stop_metric is not None:
            value = metrics[self.stop_metric]
            if better(value, self.best, self.stop_mode):
                self.best, self.waited = value, 0
            else:
                self.waited += 1
        return save

    def state(self) -> dict[str, Any]:
        return {"kept": self.kept, "best": self.best, "waited": self.waited}

    def load(self, stored: Any, source: Path) -> None:
        if not isinstance(stored, dict):
            raise TrainingError(f"{source}: key 'trainer.best' is not an object; {DAMAGED}")
        for key in ("kept", "best"):
            value = stored.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise TrainingError(f"{source}: key 'trainer.best.{key}' is not a number; {DAMAGED}")
        waited = stored.get("waited")
        if isinstance(waited, bool) or not isinstance(waited, int) or waited < 0:
            raise TrainingError(f"{source}: key 'trainer.best.waited' is not a count; {DAMAGED}")
        self.kept, self.best, self.waited = stored.get("kept"), stored.get("best"), waited


def save_best(model: CompiledModel, run_dir: Path, step: int, metric: str, value: float) -> Path:
    """Write the model to RUN/best/ atomically; its meta.json names the step, metric and value."""
    return write_model(model, run_dir / BEST_DIR, {"best": {"step": step, "metric": metric, "value": value}})
