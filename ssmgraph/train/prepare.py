"""What the loop trains: the config checked against the model, task and processes, and the
module a step calls (the model, with layers recomputed, run window by window, or compiled;
wrapped for DDP)."""

from __future__ import annotations

import torch
from torch import nn

from ssmgraph.graph.model import CompiledModel
from ssmgraph.train import distributed
from ssmgraph.train.config import TrainConfig, parse_config
from ssmgraph.train.errors import TrainingError
from ssmgraph.train.fsdp import check_strategy
from ssmgraph.train.loggers import check_loggers
from ssmgraph.train.recompute import Recomputed
from ssmgraph.train.settings import split_of, stat_of
from ssmgraph.train.step import WithState, check_tbptt
from ssmgraph.train.tasks.base import Task


def check_fit(config: TrainConfig, model: CompiledModel, task: Task, world_size: int) -> None:
    """The settings checked as a config file's are (a TrainConfig built in Python skips that),
    then against this model, task and number of processes."""
    parse_config(config.to_dict(), "<train config>")
    check_loggers(config.loggers)
    check_strategy(config, world_size)
    parts = world_size * config.accumulate
    if config.batch_size % parts:
        what = (
            f"{world_size} processes" if config.accumulate == 1 else f"accumulate {config.accumulate} x {world_size} process(es)"
        )
        raise TrainingError(
            f"batch_size {config.batch_size} must be divisible by {what}: each step's batch is cut into {parts} equal micro-batches"
        )
    if config.tbptt:
        if config.checkpointing or config.compile:
            raise TrainingError(
                "tbptt runs the model window by window (forward_with_state): set checkpointing and compile to false"
            )
        check_tbptt(model, task, config.tbptt)
    for setting, metric in (("keep_best", config.keep_best), ("early_stop.metric", config.early_stop.get("metric"))):
        if not metric:
            continue
        if stat_of(metric) in ("bits", "bits_per_byte") and task.kind != "lm":
            raise TrainingError(f"{setting}: {metric!r} needs a language-model task; use {split_of(metric)}_loss")
        try:
            next(iter(task.eval_batches(1, split_of(metric), 1)))
        except Exception as exc:  # noqa: BLE001 - the task's own words on its splits
            raise TrainingError(f"{setting}: {metric!r} reads the held-out split {split_of(metric)!r}: {exc}") from None


def training_module(model: CompiledModel, config: TrainConfig, info: distributed.DistInfo) -> nn.Module:
    """The module a training step calls: ``module(inputs)``, or ``module(inputs, state)`` with tbptt."""
    module: nn.Module = model
    if config.checkpointing:
        module = Recomputed(model)
    elif config.tbptt:
        module = WithState(model)
    module = distributed.wrap(module, info, config.strategy)
    if config.compile:
        module = torch.compile(module)  # type: ignore[assignment]
    return module
