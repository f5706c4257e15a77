"""Training: tasks from the registry, a resumable loop, checkpoints, metrics (docs/training.md)."""

from __future__ import annotations

from ssmgraph.train.config import TrainConfig, load_config
from ssmgraph.train.errors import TrainingError
from ssmgraph.train.trainer import TrainResult, evaluate_run, resume, train

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "evaluate_run", "load_config", "resume", "train"]
