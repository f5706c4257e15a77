"""Starting, continuing and scoring training runs: ``train``, ``resume`` and ``evaluate_run``.

The loop itself is :class:`ssmgraph.train.loop.Trainer` (re-exported here with ``TrainResult``
and ``evaluate``); the rules for run folders are in ssmgraph.train.runs, fitting a task to a
model in ssmgraph.train.fitting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ssmgraph.blueprint import find_blueprint, load_blueprint
from ssmgraph.folders import CHECKPOINTS, follow_link, latest_checkpoint, repair
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.serialization import load as load_model
from ssmgraph.train import distributed, lora
from ssmgraph.train.checkpoint import TRAINER_FILE, load_trainer_state
from ssmgraph.train.config import TrainConfig
from ssmgraph.train.errors import TrainingError
from ssmgraph.train.evaluation import evaluate
from ssmgraph.train.fitting import absolute_paths, check_compatible, fit_params, make_task
from ssmgraph.train.init_source import carry_files, start_from
from ssmgraph.train.loop import Trainer, TrainResult
from ssmgraph.train.runs import (
    check_new_run_dir,
    check_run_path,
    config_from,
    config_of_model,
    is_run,
    remove_run,
    write_run_files,
    writer_lock,
)


# ---- entry points -------------------------------------------------------------------------------
def train(
    blueprint: str | Path | None,
    run_dir: str | Path,
    config: TrainConfig,
    *,
    overrides: Mapping[str, Any] | None = None,
    model_view: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    init: str | Path | None = None,
) -> TrainResult:
    """Train a blueprint on ``config.task`` into a new run directory.

    With ``init`` (and ``blueprint`` None) the run starts from the weights and blueprint of a
    saved model, run or Hugging Face folder (ssmgraph.train.init_source).

    With ``overwrite`` an earlier run in ``run_dir`` is deleted, but only once the task, the
    blueprint and their fit have been checked (the trainer is built first): a typo never costs
    the old run. Task options that name files are recorded absolute (:func:`absolute_paths`)."""
    run_dir = follow_link(Path(run_dir))
    check_run_path(run_dir)
    dist = distributed.init()
    with writer_lock(run_dir):
        check_new_run_dir(run_dir, overwrite)
        if not config.task:
            raise TrainingError("no task: give --task NAME or 'task:' in the train config (`ssmgraph tasks` lists them)")
        config = replace(config, task_options=absolute_paths(config.task, config.task_options))
        task = make_task(config.task, config.task_options)
        if init is not None:
            model, start = start_from(init, blueprint, overrides or {}, model_view)
            torch.manual_seed(config.seed)
        else:
            source = find_blueprint(blueprint)
            fitted = fit_params(source, overrides or {}, task)
            torch.manual_seed(config.seed)
            model = compile_blueprint(load_blueprint(source, fitted), model=model_view)
            start = {"blueprint": str(source), "overrides": fitted, "model": model_view}
        model = model.to(dist.device)
        check_compatible(model, task)
        model = lora.attach(model, config, world_size=dist.world_size)
        trainer = Trainer(model, task, config, run_dir, progress=progress)
        if dist.is_main:
            repair(run_dir.parent, only=run_dir.name)
            if overwrite:
                remove_run(run_dir)
            record = {
                **start,
                "config": config.to_dict(),
                "task": task.describe(),
                "world_size": dist.world_size,
            }
            write_run_files(run_dir, record, config)
            carry_files(run_dir, record)
        distributed.barrier(dist)
        return trainer.run()


def resume(run_dir: str | Path, *, steps: int | None = None, progress: bool = True) -> TrainResult:
    """Continue a run from its latest checkpoint (optionally to a new total of ``steps``).

    The config comes from the checkpoint, so a total extended by an earlier ``steps`` holds on
    the next plain resume. The run's lock is held throughout; what a killed checkpoint write
    left behind is repaired first."""
    run_dir = follow_link(Path(run_dir))
    distributed.init()
    if not run_dir.is_dir():
        return _continue(run_dir, steps, progress)
    with writer_lock(run_dir):
        if distributed.current().is_main:
            repair(run_dir / CHECKPOINTS)
        return _continue(run_dir, steps, progress)


def _continue(run_dir: Path, steps: int | None, progress: bool) -> TrainResult:
    checkpoint = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if checkpoint is None and is_run(run_dir):
        raise TrainingError(
            f"{run_dir}: nothing to resume (the run stopped before its first checkpoint); "
            f"start it again with `ssmgraph train ... --out {run_dir} --overwrite`"
        )
    if checkpoint is None:
        raise TrainingError(
            f"{run_dir}: nothing to resume (no training run there); start one with `ssmgraph train ... --out {run_dir}`"
        )
    step, optimizer_state, state = load_trainer_state(checkpoint)
    config = config_from(state["config"], checkpoint / TRAINER_FILE)
    if steps is not None:
        config.steps = steps
    dist = distributed.init()
    task = make_task(config.task, config.task_options)
    model = load_model(checkpoint, merge_lora=not config.lora).to(dist.device)  # a lora run's adapters: attached again
    model = lora.attach(model, config, checkpoint, dist.world_size)
    trainer = Trainer(model, task, config, run_dir, progress=progress)
    _restore(trainer, checkpoint / TRAINER_FILE, step, optimizer_state, state)
    return trainer.run()


def _restore(trainer: Trainer, path: Path, step: int, optimizer_state: dict[str, Any], state: dict[str, Any]) -> None:
    """Restore a checkpoint's state, refusing one that does not fit the model (a tampered or
    mixed-up checkpoint) before a step fails on it."""
    fix = "the checkpoint is damaged: delete its directory to resume from the one before, or start again with --overwrite"
    try:
        trainer.restore(step, optimizer_state, state, path)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise TrainingError(
            f"{path}: the stored optimizer or RNG state does not fit ({type(exc).__name__}: {str(exc).splitlines()[0]}); {fix}"
        ) from None
    for group in trainer.optimizer.param_groups:
        for param in group["params"]:
            for key, value in trainer.optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                    raise TrainingError(
                        f"{path}: optimizer state {key!r} has shape {list(value.shape)}, its parameter {list(param.shape)}; {fix}"
                    )


def evaluate_run(
    run_dir: str | Path, task_name: str | None = None, options: Mapping[str, Any] | None = None, split: str = "test"
) -> dict[str, Any]:
    """Evaluate a run's latest model on its task (or another).

    ``run_dir`` may also be a model the run saved (a checkpoint, ``best/``, ``ema/``): the task is
    the run's. On the run's own task, ``options`` override the run's task options one by one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TrainingError(f"{run_dir}: no such run or model folder ({'a file' if run_dir.exists() else 'nothing there'})")
    config = config_of_model(run_dir) or TrainConfig()
    name = task_name or config.task
    if not name:
        raise TrainingError(f"{run_dir}: not a training run or a model of one; name the task with --task")
    base = config.task_options if name == config.task else {}
    task = make_task(name, {**base, **(options or {})})
    model = load_model(run_dir)
    check_compatible(model, task)
    metrics = evaluate(model, task, config.batch_size, config.eval_size, split)
    return {"run": str(run_dir), "task": name, "split": split, **metrics}
