"""Helpers for the tests of the built-in training tasks (test_task_registry.py,
test_synthetic_tasks.py, test_listops_task.py, test_digits_and_text_tasks.py): the task specs as
a host sees them, small options for the synthetic tasks, and the checks every batch must pass.
Imported by basename, like tests/registry/fake_plugins.py.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util

import pluggy
import torch

from ssmgraph.registry import hookspecs
from ssmgraph.registry.loading import builtin_entry_points
from ssmgraph.registry.specs import TaskSpec
from ssmgraph.train.tasks.base import IGNORE, Task

EXPECTED = ["copying", "selective_copying", "induction_heads", "mqar", "adding", "parity", "listops", "digits", "bytes", "text"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


BUILTIN_TASK_PLUGINS = tuple(ep.value for ep in builtin_entry_points() if ep.value.startswith("ssmgraph.train.tasks."))


@functools.lru_cache(maxsize=1)
def all_specs() -> dict[str, TaskSpec]:
    """The specs as a host sees them: through a pluggy manager with the ssmgraph hookspecs."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in BUILTIN_TASK_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    specs = [spec for result in pm.hook.ssmgraph_tasks() for spec in result]
    names = [s.name for s in specs]
    assert len(names) == len(set(names)), names
    return {s.name: s for s in specs}


# Small but non-trivial options for the synthetic tasks (fast to generate, every branch hit).
SMALL = {
    "copying": {"seq_len": 30, "n_memorize": 5, "vocab": 7},
    "selective_copying": {"seq_len": 40, "n_memorize": 6, "vocab": 9},
    "induction_heads": {"seq_len": 24, "vocab": 6},
    "mqar": {"seq_len": 48, "n_pairs": 8, "n_queries": 5, "vocab": 40},
    "adding": {"seq_len": 21},
    "parity": {"seq_len": 13},
    "listops": {"seq_len": 96, "min_len": 20, "max_depth": 5, "max_args": 4},
}


def small(name: str) -> Task:
    return all_specs()[name].factory(**{**all_specs()[name].defaults(), **SMALL[name]})


def check_batch(task: Task, batch, batch_size: int) -> None:
    x, y = batch.inputs, batch.targets
    assert x.shape[:2] == (batch_size, task.seq_len)
    if task.vocab_size is not None:
        assert x.dtype == torch.int64 and x.dim() == 2 and task.feature_dim is None
        assert 0 <= int(x.min()) and int(x.max()) < task.vocab_size
    else:
        assert x.dtype == torch.float32 and x.shape == (batch_size, task.seq_len, task.feature_dim)
    if task.kind == "lm":
        assert y.shape == (batch_size, task.seq_len) and y.dtype == torch.int64
        scored = y[y != IGNORE]
        assert scored.numel() > 0 and 0 <= int(scored.min()) and int(scored.max()) < task.num_classes
    elif task.kind == "classify":
        assert y.shape == (batch_size,) and y.dtype == torch.int64
        assert 0 <= int(y.min()) and int(y.max()) < task.num_classes
    else:
        assert y.shape == (batch_size,) and y.dtype == torch.float32
