"""The training loop: one process or many (torchrun), resumable bit for bit.

Every step draws the *global* batch from a generator seeded by the config, so a resumed run
and a run on N processes (each taking its slice, the loss scaled so DDP's gradient average
equals the global mean) see exactly the data one uninterrupted process would.

``train``, ``resume`` and ``evaluate_run`` start, continue and score runs; the rules for run
folders are in ssmgraph.train.runs, fitting a task to a model in ssmgraph.train.fitting.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from ssmgraph.blueprint import find_blueprint, load_blueprint
from ssmgraph.folders import CHECKPOINTS, RUN_FILE, follow_link, latest_checkpoint, repair
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.graph.model import CompiledModel
from ssmgraph.optim import param_groups
from ssmgraph.serialization import load as load_model
from ssmgraph.train import distributed
from ssmgraph.train.checkpoint import TRAINER_FILE, load_trainer_state, save_checkpoint
from ssmgraph.train.config import TrainConfig
from ssmgraph.train.errors import TrainingError
from ssmgraph.train.fitting import check_compatible, fit_params, make_task
from ssmgraph.train.losses import batch_sums, summarize
from ssmgraph.train.metrics import MetricsLog
from ssmgraph.train.runs import (
    check_new_run_dir,
    check_run_path,
    config_from,
    is_run,
    read_run_record,
    remove_run,
    write_run_files,
    writer_lock,
)
from ssmgraph.train.tasks.base import IGNORE, Batch, Task


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    model: CompiledModel | None = None
    task: Task | None = None


# ---- the loop -----------------------------------------------------------------------------------
class Trainer:
    """Runs the steps of one run: logs metrics, evaluates and checkpoints at the config's intervals."""

    def __init__(self, model: CompiledModel, task: Task, config: TrainConfig, run_dir: Path, *, progress: bool = True):
        self.model, self.task, self.config, self.run_dir = model, task, config, run_dir
        self.dist = distributed.current()
        if config.batch_size % self.dist.world_size:
            raise TrainingError(f"batch_size {config.batch_size} must be divisible by the {self.dist.world_size} processes")
        self.module: nn.Module = distributed.wrap(model, self.dist)
        self.groups = param_groups(model, lr=config.lr, weight_decay=config.weight_decay)
        for group in self.groups:
            group["base_lr"] = group["lr"]
        self.optimizer = torch.optim.AdamW(self.groups, lr=config.lr, betas=(config.beta1, config.beta2))
        self.data = torch.Generator().manual_seed(config.seed + 1)
        self.step = 0
        self.step_start: tuple[int, dict[str, torch.Tensor]] | None = None
        self.progress = progress and self.dist.is_main
        self.log = MetricsLog(run_dir, enabled=self.dist.is_main)

    # state --------------------------------------------------------------------------------------
    def trainer_state(self) -> dict[str, Any]:
        return {**self.rng_states(), "config": self.config.to_dict()}

    def rng_states(self) -> dict[str, torch.Tensor]:
        """The data generator's and torch's RNG states (the GPU's too: dropout draws there)."""
        states = {"data_rng": self.data.get_state(), "torch_rng": torch.get_rng_state()}
        if self.dist.device.type == "cuda":
            states["cuda_rng"] = torch.cuda.get_rng_state(self.dist.device)
        return states

    def set_rng_states(self, states: Mapping[str, torch.Tensor]) -> None:
        self.data.set_state(states["data_rng"])
        torch.set_rng_state(states["torch_rng"])
        if "cuda_rng" in states and self.dist.device.type == "cuda":
            torch.cuda.set_rng_state(states["cuda_rng"], self.dist.device)

    def restore(self, step: int, optimizer_state: dict[str, Any], state: dict[str, Any]) -> None:
        """Continue from a checkpoint's state (see :func:`load_trainer_state`)."""
        self.optimizer.load_state_dict(optimizer_state)
        self.set_rng_states(state)
        self.step = step
        self.log.truncate_after(step)

    def rewind_unfinished_step(self) -> None:
        """Put back the RNG states an interrupted step had already advanced (its batch is drawn
        before the update), so the checkpoint of the last completed step resumes exactly."""
        if self.step_start is not None and self.step_start[0] == self.step:
            self.set_rng_states(self.step_start[1])

    def save(self) -> Path | None:
        path = None
        if self.dist.is_main:
            path = save_checkpoint(
                self.run_dir, self.step, self.model, self.optimizer, self.trainer_state(), self.config.keep_checkpoints
            )
        distributed.barrier(self.dist)
        return path

    # one step -----------------------------------------------------------------------------------
    def local_slice(self, batch: Batch) -> Batch:
        per = batch.inputs.shape[0] // self.dist.world_size
        lo = self.dist.rank * per
        return Batch(batch.inputs[lo : lo + per], batch.targets[lo : lo + per])

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.precision == "bf16":
            return torch.autocast(device_type=self.dist.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> dict[str, float]:
        config = self.config
        self.step_start = (self.step, self.rng_states())
        scale = config.lr_at(self.step) / config.lr if config.lr > 0 else 0.0
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * scale
        batch = self.task.sample(config.batch_size, self.data, "train")
        global_count = (batch.targets != IGNORE).sum() if self.task.kind == "lm" else torch.tensor(batch.targets.shape[0])
        local = self.local_slice(batch)
        self.module.train()
        with self.autocast():
            output = self.module(local.inputs.to(self.dist.device))
        sums = batch_sums(self.task.kind, output, local.targets.to(self.dist.device), self.task.tolerance)
        loss = sums.loss / global_count.clamp(min=1) * self.dist.world_size
        totals = distributed.all_reduce_sum(sums.as_tensor(), self.dist)
        if not math.isfinite(float(totals[0])):
            raise TrainingError(f"the loss became {float(totals[0])} at step {self.step + 1}; {self.diverged_advice()}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        self.step += 1
        out = summarize(self.task.kind, totals)
        out["lr"] = config.lr_at(self.step - 1)
        return out

    def diverged_advice(self) -> str:
        config = self.config
        checkpoint = latest_checkpoint(self.run_dir)
        kept = (
            f"stopped without saving (the last good checkpoint is intact: {checkpoint})"
            if checkpoint is not None
            else f"stopped before the first checkpoint, so there is nothing to resume: start again with `--overwrite` (or another --out than {self.run_dir})"
        )
        return f"{kept}. Try a lower lr (now {config.lr:g}), grad_clip, or fp32."

    @torch.no_grad()
    def evaluate(self, split: str = "test") -> dict[str, float]:
        return evaluate(self.model, self.task, self.config.batch_size, self.config.eval_size, split, self.autocast)

    # the run ------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        config = self.config
        tokens_per_step = config.batch_size * self.task.seq_len
        last: dict[str, float] = {}
        interrupted = False
        started, seen_steps = time.perf_counter(), 0
        with self.log, _progress(self.progress, config.steps, self.step) as bar:
            try:
                while self.step < config.steps:
                    tic = time.perf_counter()
                    last = self.train_step()
                    seen_steps += 1
                    rate = tokens_per_step / max(time.perf_counter() - tic, 1e-9)
                    last["tokens_per_s"] = rate
                    if self.step % config.log_interval == 0 or self.step == config.steps:
                        self.log.write({"step": self.step, "split": "train", **last, "elapsed": time.perf_counter() - started})
                    if self.step % config.eval_interval == 0 or self.step == config.steps:
                        evaluation = self.evaluate()
                        self.log.write({"step": self.step, "split": "eval", **evaluation})
                        last.update({f"eval_{k}": v for k, v in evaluation.items()})
                    if self.step % config.checkpoint_interval == 0 or self.step == config.steps:
                        self.save()
                    bar(self.step, last)
            except KeyboardInterrupt:
                interrupted = True
                self.rewind_unfinished_step()
                self.save()
        return TrainResult(self.run_dir, self.step, last, interrupted, self.model, self.task)


@torch.no_grad()
def evaluate(
    model: nn.Module, task: Task, batch_size: int, size: int, split: str = "test", autocast: Any = contextlib.nullcontext
) -> dict[str, float]:
    """Loss and accuracy on the task's fixed held-out set."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = None
    for batch in task.eval_batches(batch_size, split, size):
        with autocast():
            output = model(batch.inputs.to(device))
        sums = batch_sums(task.kind, output, batch.targets.to(device), task.tolerance)
        total = sums if total is None else total + sums
    model.train(was_training)
    assert total is not None
    return summarize(task.kind, total.as_tensor())


@contextlib.contextmanager
def _progress(enabled: bool, total: int, start: int) -> Iterator[Any]:
    if not enabled:
        yield lambda step, metrics: None
        return
    columns = (
        TextColumn("[bold]train"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        handle = progress.add_task("train", total=total, completed=start, info="")

        def update(step: int, metrics: dict[str, float]) -> None:
            info = f"loss {metrics.get('loss', float('nan')):.3f} acc {metrics.get('accuracy', 0.0):.2f}"
            if "eval_accuracy" in metrics:
                info += f" held-out {metrics['eval_accuracy']:.2f}"
            info += f" {metrics.get('tokens_per_s', 0.0) / 1000:.1f}k tok/s"
            progress.update(handle, completed=step, info=info)

        yield update


# ---- entry points -------------------------------------------------------------------------------
def train(
    blueprint: str | Path,
    run_dir: str | Path,
    config: TrainConfig,
    *,
    overrides: Mapping[str, Any] | None = None,
    model_view: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> TrainResult:
    """Train a blueprint on ``config.task`` into a new run directory.

    With ``overwrite`` an earlier run in ``run_dir`` is deleted, but only once the task, the
    blueprint and their fit have been checked: a typo never costs the old run."""
    run_dir = follow_link(Path(run_dir))
    check_run_path(run_dir)
    dist = distributed.init()
    with writer_lock(run_dir):
        check_new_run_dir(run_dir, overwrite)
        if not config.task:
            raise TrainingError("no task: give --task NAME or 'task:' in the train config (`ssmgraph tasks` lists them)")
        task = make_task(config.task, config.task_options)
        source = find_blueprint(blueprint)
        fitted = fit_params(source, overrides or {}, task)
        torch.manual_seed(config.seed)
        model = compile_blueprint(load_blueprint(source, fitted), model=model_view).to(dist.device)
        check_compatible(model, task)
        if dist.is_main:
            repair(run_dir.parent, only=run_dir.name)
            if overwrite:
                remove_run(run_dir)
            record = {
                "blueprint": str(source),
                "overrides": fitted,
                "model": model_view,
                "config": config.to_dict(),
                "task": task.describe(),
                "world_size": dist.world_size,
            }
            write_run_files(run_dir, record, config)
        distributed.barrier(dist)
        return Trainer(model, task, config, run_dir, progress=progress).run()


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
    model = load_model(checkpoint).to(dist.device)
    trainer = Trainer(model, task, config, run_dir, progress=progress)
    _restore(trainer, checkpoint / TRAINER_FILE, step, optimizer_state, state)
    return trainer.run()


def _restore(trainer: Trainer, path: Path, step: int, optimizer_state: dict[str, Any], state: dict[str, Any]) -> None:
    """Restore a checkpoint's state, refusing one that does not fit the model (a tampered or
    mixed-up checkpoint) before a step fails on it."""
    fix = "the checkpoint is damaged: delete its directory to resume from the one before, or start again with --overwrite"
    try:
        trainer.restore(step, optimizer_state, state)
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

    On the run's own task, ``options`` override the run's task options one by one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TrainingError(f"{run_dir}: no such run or model folder ({'a file' if run_dir.exists() else 'nothing there'})")
    record = read_run_record(run_dir) if (run_dir / RUN_FILE).is_file() else None
    config = config_from(record["config"], run_dir / RUN_FILE) if record else TrainConfig()
    name = task_name or config.task
    if not name:
        raise TrainingError(f"{run_dir}: not a training run; name the task with --task")
    base = config.task_options if name == config.task else {}
    task = make_task(name, {**base, **(options or {})})
    model = load_model(run_dir)
    check_compatible(model, task)
    metrics = evaluate(model, task, config.batch_size, config.eval_size, split)
    return {"run": str(run_dir), "task": name, "split": split, **metrics}
