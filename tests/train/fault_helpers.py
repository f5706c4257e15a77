"""Helpers for the fault-injection tests (test_fault_kills.py, test_folder_locks.py,
test_write_targets.py): a tiny model and a short training configuration.
Imported by basename, like tests/registry/fake_plugins.py.
"""

from __future__ import annotations

from ssmgraph.train import TrainConfig

TINY = {"d_model": 8, "layers": 1, "hidden": 8}
TRAIN_TINY = [
    "train",
    "lstm",
    "--task",
    "selective_copying",
    "-t",
    "seq_len=16",
    "-t",
    "n_memorize=2",
    "--set",
    "d_model=8",
    "--set",
    "hidden=8",
    "--set",
    "layers=1",
    "-b",
    "4",
    "-q",
]
"""The CLI's words for a tiny training run (then --steps, --out, ...)."""


def config(**changes) -> TrainConfig:
    base = {
        "task": "selective_copying",
        "task_options": {"seq_len": 16, "n_memorize": 2},
        "steps": 6,
        "batch_size": 4,
        "warmup_steps": 1,
        "eval_interval": 100,
        "eval_size": 8,
        "log_interval": 1,
        "checkpoint_interval": 2,
        "keep_checkpoints": 1,
    }
    return TrainConfig(**{**base, **changes})
