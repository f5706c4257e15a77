"""The training configuration: a YAML file with the same located errors as blueprints.

```yaml
task: selective_copying
task_options: {seq_len: 128}
steps: 2000
batch_size: 32
lr: 3e-3
warmup_steps: 100
```

Every key is optional except ``task`` (which ``--task`` may give instead). Values are checked
against the schema below (type, range, choices); unknown keys get a "did you mean".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ssmgraph.blueprint.yamlsafe import LDict, load_file, load_yaml
from ssmgraph.errors import BlueprintError, Collector, Diagnostic, Mark, SsmgraphError, did_you_mean
from ssmgraph.registry.specs import Param
from ssmgraph.safeio import check_fields
from ssmgraph.train.settings import LOGGER_NAMES, METRICS, check_settings

SCHEMA: tuple[Param, ...] = (
    Param("task", str, "", "the task to train on (`ssmgraph tasks` lists them)"),
    Param("task_options", dict, {}, "the task's options, e.g. {seq_len: 256}"),
    Param("steps", int, 1000, "optimizer steps", min=1),
    Param("batch_size", int, 32, "sequences per optimizer step, over all processes and micro-batches", min=1),
    Param("lr", float, 1e-3, "peak learning rate", min=0.0),
    Param("weight_decay", float, 0.1, "AdamW weight decay (not applied to SSM parameters, biases and gains)", min=0.0),
    Param("beta1", float, 0.9, "AdamW beta1", min=0.0, max=1.0),
    Param("beta2", float, 0.98, "AdamW beta2", min=0.0, max=1.0),
    Param("warmup_steps", int, 50, "linear warm-up steps", min=0),
    Param("schedule", str, "cosine", "learning-rate decay after warm-up", choices=("cosine", "linear", "constant")),
    Param("min_lr_ratio", float, 0.1, "final learning rate as a fraction of lr", min=0.0, max=1.0),
    Param("grad_clip", float, 1.0, "clip the gradient norm to this (0: off)", min=0.0),
    Param("eval_interval", int, 200, "evaluate every this many steps (and at the end)", min=1),
    Param("eval_size", int, 512, "held-out examples per evaluation", min=1),
    Param("log_interval", int, 10, "write training metrics every this many steps", min=1),
    Param("checkpoint_interval", int, 500, "save a checkpoint every this many steps (and at the end)", min=1),
    Param("keep_checkpoints", int, 2, "how many recent checkpoints to keep", min=1),
    Param("seed", int, 0, "seed for weights and data"),
    Param("precision", str, "fp32", "fp32, or bf16 autocast (SSM kernels stay fp32)", choices=("fp32", "bf16")),
    Param("accumulate", int, 1, "micro-batches per step (batch_size / accumulate each), gradients summed", min=1),
    Param("checkpointing", bool, False, "recompute each repeated layer in the backward pass: less memory, more time"),
    Param("compile", bool, False, "torch.compile the model for training"),
    Param("tbptt", int, 0, "truncated backpropagation through time: windows of this many positions (0: off)", min=0),
    Param("ema", float, 0.0, "decay of an exponential moving average of the weights (0: off), e.g. 0.999", min=0.0, max=1.0),
    Param(
        "keep_best", str, "", "save the model with the best value of this held-out metric to RUN/best/", choices=("", *METRICS)
    ),
    Param("early_stop", dict, {}, "{metric, patience, mode}: stop when the metric has not improved for patience evaluations"),
    Param("loggers", list, [], f"metric loggers besides metrics.jsonl: {', '.join(LOGGER_NAMES)}"),
    Param("strategy", str, "ddp", "several processes: ddp (replicated) or fsdp (sharded, FSDP2)", choices=("ddp", "fsdp")),
    Param("lora", dict, {}, "LoRA adapters through PEFT, {r, alpha, targets, dropout, merge}: only they train"),
)


@dataclass
class TrainConfig:
    task: str = ""
    task_options: dict[str, Any] = field(default_factory=dict)
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    warmup_steps: int = 50
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    eval_interval: int = 200
    eval_size: int = 512
    log_interval: int = 10
    checkpoint_interval: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    precision: str = "fp32"
    accumulate: int = 1
    checkpointing: bool = False
    compile: bool = False
    tbptt: int = 0
    ema: float = 0.0
    keep_best: str = ""
    early_stop: dict[str, Any] = field(default_factory=dict)
    loggers: list[str] = field(default_factory=list)
    strategy: str = "ddp"
    lora: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based): warm-up, then decay."""
        return scheduled_lr(step, self.steps, self.lr, self.warmup_steps, self.schedule, self.min_lr_ratio)


assert [p.name for p in SCHEMA] == [f.name for f in fields(TrainConfig)]


def scheduled_lr(step: int, steps: int, lr: float, warmup: int, schedule: str = "cosine", min_lr_ratio: float = 0.1) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``steps``: linear warm-up over
    ``warmup`` steps, then ``schedule`` (cosine, linear or constant) down to ``min_lr_ratio · lr``
    (training, and the merge methods that train)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    span = max(1, steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    if schedule == "linear":
        factor = 1.0 - progress
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * factor)


def parse_config(raw: Any, source: str, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Check a loaded mapping (plus command-line overrides) against the schema."""
    errors = Collector()
    if raw is None:
        raw = LDict(mark=Mark(source, 1, 1))
    if not isinstance(raw, dict):
        errors.add(
            "E112",
            "a train config is a mapping of settings, e.g. 'steps: 1000'",
            getattr(raw, "mark", None) or Mark(source, 1, 1),
        )
        errors.raise_if_any()
    values: dict[str, Any] = {}
    names = [p.name for p in SCHEMA]
    for key, value in {**raw, **(overrides or {})}.items():
        mark = raw.mark_of(key) if isinstance(raw, LDict) and key in raw else None
        param = next((p for p in SCHEMA if p.name == key), None)
        if param is None:
            key_mark = raw.key_mark(key) if isinstance(raw, LDict) and key in raw else None
            errors.add("E110", f"unknown setting {key!r}", key_mark, str(key), did_you_mean(str(key), names))
            continue
        value, problem = param.check(value)
        if problem:
            errors.add("E112", f"{key}: {problem}", mark, str(key), param.doc)
            continue
        values[key] = value
    check_settings(values, raw if isinstance(raw, LDict) else None, errors)
    errors.raise_if_any()
    return TrainConfig(**values)


def stored_config(stored: Any, source: str | Path, error: type[SsmgraphError]) -> TrainConfig:
    """The config an earlier run stored (run.json, trainer.json), checked like a fresh one and
    complete (a missing setting would silently become its default): problems are one ``error``
    naming ``source`` and the keys."""
    fix = "the file is damaged or from another version of ssmgraph: restore it, or start a new run with --overwrite"
    check_fields(stored, {p.name: object for p in SCHEMA}, source=source, error=error, where="config", fix=fix)
    try:
        config = parse_config(stored, str(source))
    except BlueprintError as exc:
        raise error(f"{source}: {'; '.join(_stored_problem(d) for d in exc.diagnostics)}; {fix}") from None
    if not config.task:
        raise error(f"{source}: key 'config.task' is empty; {fix}")
    return config


def _stored_problem(diagnostic: Diagnostic) -> str:
    problem = diagnostic.message.removeprefix(f"{diagnostic.path}: ")
    return f"key 'config.{diagnostic.path}': {problem}" + (f" ({diagnostic.help})" if diagnostic.help else "")


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    if path is None:
        return parse_config(None, "<defaults>", overrides)
    return parse_config(load_file(path, str(path)), str(path), overrides)


def config_from_text(text: str, name: str = "train.yaml", overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    return parse_config(load_yaml(text, name), name, overrides)
