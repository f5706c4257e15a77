"""The training loop: one process or many (torchrun), resumable bit for bit.

Every step draws the *global* batch from a generator seeded by the config, so a resumed run
and a run on N processes (each taking its slice, the loss scaled so DDP's gradient average
equals the global mean) see exactly the data one uninterrupted process would. The passes of a
step (micro-batches, TBPTT windows) are in ssmgraph.train.step; what a held-out evaluation
leads to (keep-best, early stopping) in ssmgraph.train.best; the weight average in
ssmgraph.train.ema.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ssmgraph.folders import latest_checkpoint
from ssmgraph.graph.model import CompiledModel
from ssmgraph.optim import param_groups
from ssmgraph.train import distributed, lora
from ssmgraph.train.best import BestPolicy, save_best
from ssmgraph.train.checkpoint import TRAINER_FILE, carried_hf, save_checkpoint
from ssmgraph.train.config import TrainConfig
from ssmgraph.train.ema import WeightAverage
from ssmgraph.train.errors import TrainingError
from ssmgraph.train.evaluation import evaluate
from ssmgraph.train.fsdp import checkpoint_state, is_sharded, load_optimizer
from ssmgraph.train.loggers import open_loggers
from ssmgraph.train.losses import summarize
from ssmgraph.train.metrics import MetricsLog
from ssmgraph.train.prepare import check_fit, training_module
from ssmgraph.train.progress import progress_bar
from ssmgraph.train.step import backward_passes, scored_count
from ssmgraph.train.tasks.base import Batch, Task


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    model: CompiledModel | None = None
    task: Task | None = None
    stopped_early: bool = False
    """``early_stop`` ended the run before ``steps``."""


class Trainer:
    """Runs the steps of one run: logs metrics, evaluates and checkpoints at the config's intervals.

    Every run, new or resumed, builds one: the config is checked against the model, task and
    processes (:func:`check_fit`) here, once (``train`` builds it before it writes the run folder)."""

    def __init__(self, model: CompiledModel, task: Task, config: TrainConfig, run_dir: Path, *, progress: bool = True):
        self.model, self.task, self.config, self.run_dir = model, task, config, run_dir
        self.dist = distributed.current()
        check_fit(config, model, task, self.dist.world_size)
        self.module = training_module(model, config, self.dist)
        self.groups = param_groups(model, lr=config.lr, weight_decay=config.weight_decay)
        for group in self.groups:
            group["base_lr"] = group["lr"]
        self.optimizer = torch.optim.AdamW(self.groups, lr=config.lr, betas=(config.beta1, config.beta2))
        self.ema = WeightAverage(model, config.ema) if config.ema > 0 else None
        self.policy = BestPolicy(config)
        self.data = torch.Generator().manual_seed(config.seed + 1)
        self.step = 0
        self.step_start: tuple[int, dict[str, torch.Tensor]] | None = None
        self.progress = progress and self.dist.is_main
        self.log = MetricsLog(run_dir, enabled=self.dist.is_main, open_loggers=lambda start: open_loggers(run_dir, config, start))

    # state --------------------------------------------------------------------------------------
    def trainer_state(self) -> dict[str, Any]:
        state = {**self.rng_states(), "config": self.config.to_dict(), "best": self.policy.state()}
        if self.ema is not None:
            state["ema"] = self.ema.state()
        return state

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

    def restore(self, step: int, optimizer_state: dict[str, Any], state: dict[str, Any], source: Path | None = None) -> None:
        """Continue from a checkpoint's state (see :func:`load_trainer_state`)."""
        source = source or Path(TRAINER_FILE)
        load_optimizer(self.model, self.optimizer, optimizer_state)
        self.set_rng_states(state)
        if "best" in state:
            self.policy.load(state["best"], source)
        if self.ema is not None:
            if "ema" not in state:
                raise TrainingError(f"{source}: no key 'trainer.ema' (the weight average the config's ema keeps)")
            self.ema.load(state["ema"], source)
        self.step = step
        self.log.truncate_after(step)

    def rewind_unfinished_step(self) -> None:
        """Put back the RNG states an interrupted step had already advanced (its batch is drawn
        before the update), so the checkpoint of the last completed step resumes exactly."""
        if self.step_start is not None and self.step_start[0] == self.step:
            self.set_rng_states(self.step_start[1])

    @cached_property
    def carried(self) -> dict[str, Any] | None:
        """run.json's ``hf`` entry that each checkpoint carries, read at the first save (a new run
        writes run.json once its trainer is built)."""
        return carried_hf(self.run_dir)

    def save(self) -> Path | None:
        path = None
        gathers = self.dist.is_main or is_sharded(self.model)  # every process takes part in gathering fsdp shards
        weights, optimizer_state = checkpoint_state(self.model, self.optimizer) if gathers else ({}, {})
        if self.dist.is_main:
            state, keep = self.trainer_state(), self.config.keep_checkpoints
            path = save_checkpoint(self.run_dir, self.step, self.model, optimizer_state, state, keep, weights, self.carried)
            if self.ema is not None:
                self.ema.save(self.run_dir, self.step)
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
        count = scored_count(self.task, batch).clamp(min=1)
        self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums = backward_passes(
            self.module,
            self.task,
            self.local_slice(batch),
            count,
            world_size=self.dist.world_size,
            parts=config.accumulate,
            window=config.tbptt,
            device=self.dist.device,
            autocast=self.autocast,
        )
        totals = distributed.all_reduce_sum(sums, self.dist)
        if not math.isfinite(float(totals[0])):
            raise TrainingError(f"the loss became {float(totals[0])} at step {self.step + 1}; {self.diverged_advice()}")
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
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

    # held-out evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str = "test") -> dict[str, float]:
        return evaluate(self.model, self.task, self.config.batch_size, self.config.eval_size, split, self.autocast)

    def held_out(self) -> dict[str, float]:
        """Evaluate (the weight average, with ``ema``) on the test split, logged as ``eval``, and
        on the other splits keep-best and early stopping read; they see the results."""
        with self.ema.swapped() if self.ema is not None else contextlib.nullcontext():
            results = {split: self.evaluate(split) for split in ["test", *sorted(self.policy.splits - {"test"})]}
            metrics = {f"{split}_{k}": v for split, values in results.items() for k, v in values.items()}
            if self.policy.observe(metrics) and self.dist.is_main:
                metric = self.policy.keep_metric
                assert metric is not None
                save_best(self.model, self.run_dir, self.step, metric, metrics[metric])
        for split, values in results.items():
            self.log.write({"step": self.step, "split": "eval" if split == "test" else split, **values})
        return results["test"]

    # the run ------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to ``config.steps`` (or an early stop); a complete run of ``lora.merge`` also writes
        ``RUN/merged/``."""
        config = self.config
        tokens_per_step = config.batch_size * self.task.seq_len
        last: dict[str, float] = {}
        interrupted = False
        started = time.perf_counter()
        with self.log, progress_bar(self.progress, config.steps, self.step) as bar:
            try:
                while self.step < config.steps and not self.policy.stopped:
                    tic = time.perf_counter()
                    last = self.train_step()
                    rate = tokens_per_step / max(time.perf_counter() - tic, 1e-9)
                    last["tokens_per_s"] = rate
                    if self.step % config.log_interval == 0 or self.step == config.steps:
                        self.log.write({"step": self.step, "split": "train", **last, "elapsed": time.perf_counter() - started})
                    if self.step % config.eval_interval == 0 or self.step == config.steps:
                        last.update({f"eval_{k}": v for k, v in self.held_out().items()})
                    if self.step % config.checkpoint_interval == 0 or self.step == config.steps or self.policy.stopped:
                        self.save()
                    bar(self.step, last)
            except KeyboardInterrupt:
                interrupted = True
                self.rewind_unfinished_step()
                self.save()
        lora.finish(self.run_dir, config, interrupted, self.dist.is_main)
        return TrainResult(self.run_dir, self.step, last, interrupted, self.model, self.task, self.policy.stopped)
