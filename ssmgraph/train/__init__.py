"""Training: tasks from the registry, a resumable loop, checkpoints, metrics (docs/training.md).

Names are imported lazily: the registry imports ``ssmgraph.train.tasks`` while the loop
imports the registry.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "ssmgraph.train.config",
    "load_config": "ssmgraph.train.config",
    "TrainResult": "ssmgraph.train.loop",
    "TrainingError": "ssmgraph.train.loop",
    "evaluate_run": "ssmgraph.train.loop",
    "resume": "ssmgraph.train.loop",
    "train": "ssmgraph.train.loop",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ssmgraph.train' has no attribute {name!r}")
