"""Fitting a task and a model together: the task built from the registry with its options
checked, the blueprint params the task determines, and the checks that the model reads what
the task feeds and outputs what it scores. Training, evaluation, merging and ``generate`` use them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ssmgraph.blueprint import load_blueprint
from ssmgraph.errors import Collector, did_you_mean
from ssmgraph.graph.model import CompiledModel
from ssmgraph.registry.plugins import get_registry
from ssmgraph.train.errors import TrainingError
from ssmgraph.train.tasks.base import Task


def make_task(name: str, options: Mapping[str, Any]) -> Task:
    """Build a registered task, its options checked against the task's schema."""
    registry = get_registry()
    spec = registry.task(name)
    if spec is None:
        raise TrainingError(f"unknown task {name!r}; {did_you_mean(name, registry.tasks)} (`ssmgraph tasks` lists them)")
    errors = Collector()
    values = spec.defaults()
    for key, value in options.items():
        param = spec.param(key)
        if param is None:
            errors.add(
                "E202",
                f"task {name!r} has no option {key!r}",
                None,
                f"task_options.{key}",
                did_you_mean(key, [p.name for p in spec.params]),
            )
            continue
        value, problem = param.check(value)
        if problem:
            errors.add("E203", f"task {name!r} option {key!r}: {problem}", None, f"task_options.{key}", param.doc)
        values[key] = value
    for param in spec.params:
        if param.required and param.name not in values:
            errors.add(
                "E204",
                f"task {name!r} needs option {param.name!r} ({param.doc})",
                None,
                "task_options",
                f"--task-option {param.name}=...",
            )
    errors.raise_if_any()
    task = spec.factory(**values)
    task.name = name
    return task


def absolute_paths(name: str, options: Mapping[str, Any], base: Path | None = None) -> dict[str, Any]:
    """``options`` of task ``name`` with those that name files (``Param(path=True)``: ``path``,
    ``tokenizer``) made absolute, ``~`` expanded: a relative one starts from ``base`` (a merge
    recipe's folder, as its checkpoints do), by default from the working directory (a run records
    them so, and resumes or is evaluated from any directory)."""
    spec = get_registry().task(name)
    paths = {p.name for p in spec.params if p.path} if spec is not None else set()
    start = base if base is not None else Path()
    return {
        k: str((start / Path(v).expanduser()).absolute()) if k in paths and isinstance(v, str) else v for k, v in options.items()
    }


def fit_params(blueprint_source: str | Path, overrides: Mapping[str, Any], task: Task) -> dict[str, Any]:
    """Fill blueprint params the task determines (vocab, classes, features, max_len) unless set."""
    params = load_blueprint(blueprint_source, overrides).params
    fitted = dict(overrides)
    wanted: dict[str, Any] = {}
    if task.vocab_size is not None:
        wanted["vocab"] = max(task.vocab_size, task.num_classes or 0)
    if task.kind == "classify":
        wanted["classes"] = task.num_classes
    if task.kind == "regress":
        wanted["classes"] = 1
    if task.feature_dim is not None:
        wanted["features"] = task.feature_dim
    if "max_len" in params and isinstance(params["max_len"], int) and params["max_len"] < task.seq_len:
        wanted["max_len"] = task.seq_len
    for key, value in wanted.items():
        if key in params and key not in overrides:
            fitted[key] = value
    return fitted


def check_compatible(model: CompiledModel, task: Task) -> None:
    """The model's input and output must be what the task feeds and scores."""
    name = model.blueprint.name
    if len(model.input_types) != 1 or len(model.outputs) != 1:
        raise TrainingError(
            f"blueprint {name!r} has {len(model.input_types)} inputs and {len(model.outputs)} outputs; training needs one of each (build a view with --model)"
        )
    check_input_dtype(model, task)
    out_value = next(iter(model.outputs.values()))
    out = model.nodes[out_value].out_type
    if task.kind == "lm":
        ok = len(out.shape) == 3 and isinstance(out.shape[-1], int) and out.shape[-1] >= (task.num_classes or 0)
        want = f"per-position logits [batch, seq, >= {task.num_classes}]"
    elif task.kind == "classify":
        ok = len(out.shape) == 2 and out.shape[-1] == task.num_classes
        want = f"class logits [batch, {task.num_classes}] (a head.classify output)"
    else:
        ok = len(out.shape) == 2 and out.shape[-1] == 1
        want = "one value per sequence [batch, 1] (head.classify with classes 1)"
    if not ok:
        raise TrainingError(
            f"task needs {want}, but blueprint {name!r} outputs {out}; e.g. `ssmgraph train classifier --task ...` for sequence tasks"
        )
    check_input_range(model, task)


def check_reads(model: CompiledModel, task: Task) -> None:
    """The model's (single) input takes what the task feeds: the dtype, token ids within the
    embedding, sequences within the position embedding. Its outputs are not checked here."""
    if len(model.input_types) != 1:
        raise TrainingError(
            f"blueprint {model.blueprint.name!r} has {len(model.input_types)} inputs; a task feeds one (build a view with --model)"
        )
    check_input_dtype(model, task)
    check_input_range(model, task)


def check_input_dtype(model: CompiledModel, task: Task) -> None:
    name = model.blueprint.name
    (in_type,) = model.input_types.values()
    if in_type.dtype != task.input_dtype:
        want = "token ids (an embed.token input)" if task.input_dtype == "int" else "float features (an embed.linear input)"
        raise TrainingError(
            f"task {task.label()} feeds {want}, but blueprint {name!r} reads {in_type}; pick a blueprint whose input matches "
            "(shipped: `classifier` reads features; `token_classifier` and the language models read tokens)"
        )


def token_vocab(model: CompiledModel) -> int | None:
    """The smallest token-embedding vocabulary of the model (None: it reads no token ids)."""
    sizes = [int(info.args["vocab"]) for info in model.nodes.values() if info.block == "embed.token"]
    return min(sizes, default=None)


def position_limit(model: CompiledModel, *, learned_only: bool = False) -> int | None:
    """The longest sequence the model's position embeddings take (None: no limit)."""
    limits = [
        int(info.args["max_len"])
        for info in model.nodes.values()
        if info.block == "embed.position" and (not learned_only or info.args.get("kind", "learned") == "learned")
    ]
    return min(limits, default=None)


def check_input_range(model: CompiledModel, task: Task) -> None:
    """Token ids must fit the embedding table and sequences the position embedding."""
    name = model.blueprint.name
    vocab = token_vocab(model)
    if task.vocab_size is not None and vocab is not None and task.vocab_size > vocab:
        raise TrainingError(
            f"task {task.label()} feeds token ids up to {task.vocab_size - 1}, but blueprint {name!r} embeds only {vocab} tokens; "
            "use a model trained or built for this task (or a larger --set vocab=...)"
        )
    limit = position_limit(model)
    if limit is not None and task.seq_len > limit:
        raise TrainingError(
            f"task sequences have length {task.seq_len}, but blueprint {name!r} embeds positions only up to max_len {limit}; "
            f"use a shorter -t seq_len=... (at most {limit}) or a model with a larger max_len"
        )
