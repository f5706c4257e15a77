"""``ssmgraph train``, ``eval``, ``plot``, ``tasks`` and ``generate``: runs and what they learned.

The training machinery (torch) is imported inside the commands that use it: `ssmgraph --help`
and each command's help must start without torch (tests/cli/test_startup.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ssmgraph.cli.errors import user_errors, warn_plugin_problems
from ssmgraph.cli.options import SetOption, TaskOption
from ssmgraph.cli.output import err, listing, params_table, print_json, stdout
from ssmgraph.errors import SsmgraphError, did_you_mean
from ssmgraph.registry.plugins import get_registry

if TYPE_CHECKING:
    from ssmgraph.train.trainer import TrainResult


@user_errors
def train(
    blueprint: Annotated[
        str, typer.Argument(help="A blueprint file or shipped name; with --resume, ignored (give the run directory as --out).")
    ] = "",
    task: Annotated[
        str | None, typer.Option("--task", help="The task (`ssmgraph tasks` lists them); or `task:` in --config.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="The run directory: checkpoints, metrics.jsonl, run.json.")] = Path(
        "runs/latest"
    ),
    steps: Annotated[int | None, typer.Option(min=1, help="Optimizer steps (overrides the config).")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="A train config YAML (docs/training.md lists its settings).")
    ] = None,
    set_: SetOption = None,
    task_option: TaskOption = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", "-b", min=1, help="Sequences per optimizer step, all processes and micro-batches together."),
    ] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="Peak learning rate (overrides the config).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for weights and data (overrides the config).")] = None,
    warmup: Annotated[int | None, typer.Option("--warmup", min=0, help="Warm-up steps (warmup_steps).")] = None,
    eval_every: Annotated[int | None, typer.Option("--eval-every", min=1, help="Evaluate every N steps (eval_interval).")] = None,
    save_every: Annotated[
        int | None, typer.Option("--save-every", min=1, help="Checkpoint every N steps (checkpoint_interval).")
    ] = None,
    accumulate: Annotated[
        int | None,
        typer.Option("--accumulate", min=1, help="Micro-batches per step: same update, 1/N of the activation memory."),
    ] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="fp32, or bf16 autocast.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Train one view of a multi-model blueprint.")] = None,
    init: Annotated[
        Path | None,
        typer.Option(
            "--init",
            help="Start from this model's weights and blueprint (no BLUEPRINT then): a saved model, merge output, "
            "run (latest checkpoint) or Hugging Face folder. --set may change only what keeps every weight's shape.",
        ),
    ] = None,
    resume_run: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its latest checkpoint, bit for bit.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    show: Annotated[bool, typer.Option(help="Show the trained model on a few held-out examples.")] = True,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace an existing run in --out instead of refusing (once the new run's task and blueprint check out).",
        ),
    ] = False,
) -> None:
    """Train a blueprint on a built-in or plugin task.

    Checkpoints (safetensors) are written atomically; Ctrl-C saves and exits; `--resume`
    continues with the same losses an uninterrupted run would have. Several processes:
    `torchrun --nproc_per_node 2 -m ssmgraph train ...`. Examples:

    * `ssmgraph train mamba --task selective_copying --steps 500 --out runs/sc`
    * `ssmgraph train classifier --task digits --set mixer=mix.s4d --out runs/digits`
    * `ssmgraph train gpt --task bytes -t path=my_texts/ --out runs/lm`
    * `ssmgraph train gpt --task bytes -b 64 --accumulate 4 --precision bf16 --out runs/lm` (64 sequences a step, 16 at a time)
    * `ssmgraph train mamba --task copying --warmup 100 --eval-every 250 --save-every 1000 --out runs/copy`
    * `ssmgraph train gpt --task bytes -c train.yaml --out runs/lm` (every setting: docs/training.md; flags win over the file)
    * `ssmgraph train --init runs/base --task bytes --set dropout=0.1 --out runs/tuned`
    """
    from ssmgraph.blueprint import parse_overrides  # deferred (torch): see the module docstring
    from ssmgraph.train.config import load_config
    from ssmgraph.train.trainer import resume
    from ssmgraph.train.trainer import train as run_training

    warn_plugin_problems()
    if resume_run:
        ignored = [
            flag
            for flag, value in (
                ("--task", task), ("--config", config), ("--set", set_), ("-t", task_option), ("--batch-size", batch_size),
                ("--lr", lr), ("--seed", seed), ("--warmup", warmup), ("--eval-every", eval_every),
                ("--save-every", save_every), ("--accumulate", accumulate), ("--precision", precision),
                ("--model", model), ("--init", init), ("--overwrite", overwrite or None),
            )
            if value is not None
        ]  # fmt: skip
        if ignored:
            raise SsmgraphError(
                f"--resume continues the run with the config of its checkpoint (only --steps changes it); "
                f"drop {', '.join(ignored)}, or start a new run from it with --init {out}"
            )
        result = resume(out, steps=steps, progress=not quiet)
    else:
        if not blueprint and init is None:
            raise SsmgraphError(
                "name a blueprint to train (e.g. `ssmgraph train gpt --task bytes`), start from a model with --init, or use --resume"
            )
        settings: dict[str, Any] = {
            k: v
            for k, v in (
                ("steps", steps),
                ("batch_size", batch_size),
                ("lr", lr),
                ("seed", seed),
                ("task", task),
                ("warmup_steps", warmup),
                ("eval_interval", eval_every),
                ("checkpoint_interval", save_every),
                ("accumulate", accumulate),
                ("precision", precision),
            )
            if v is not None
        }
        cfg = load_config(config, settings)
        if task_option:
            cfg.task_options = {**cfg.task_options, **parse_overrides(task_option, "-t")}
        overrides = parse_overrides(set_ or [])
        result = run_training(
            blueprint or None, out, cfg, overrides=overrides, model_view=model, progress=not quiet, overwrite=overwrite, init=init
        )
    _report_training(result, show and not quiet)


def _report_training(result: TrainResult, show: bool) -> None:
    from ssmgraph.serialization import load  # deferred (torch): see the module docstring
    from ssmgraph.train.distributed import current
    from ssmgraph.train.examples import examples_table
    from ssmgraph.train.fsdp import is_sharded
    from ssmgraph.train.metrics import read_metrics

    if not current().is_main:
        return
    model = result.model
    if show and model is not None and is_sharded(model):  # only the main process runs on: show the saved model
        model = load(result.run_dir)
    if show and result.task is not None and model is not None:
        stdout().print(examples_table(model, result.task))
    evals = [r for r in read_metrics(result.run_dir) if r["split"] == "eval"]
    if result.interrupted:
        err.print(
            f"interrupted: saved step {result.step} to {result.run_dir}; continue with `ssmgraph train --resume --out {result.run_dir}`",
            highlight=False,
        )
    if result.stopped_early:
        err.print(f"stopped early at step {result.step}: the early_stop metric stopped improving", highlight=False)
    if evals:
        last = evals[-1]
        extra = f", {last['bits']:.3f} bits/token" if "bits" in last else ""
        extra += f", {last['bits_per_byte']:.3f} bits/byte" if "bits_per_byte" in last else ""
        err.print(
            f"step {last['step']}: held-out loss {last['loss']:.4f}, accuracy {last['accuracy']:.3f}{extra}", highlight=False
        )
    err.print(
        f"run saved in {result.run_dir} (`ssmgraph eval {result.run_dir}`, `ssmgraph plot {result.run_dir}`)", highlight=False
    )


@user_errors
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A training run directory, or a model it saved (RUN/best, RUN/ema).")],
    task: Annotated[str | None, typer.Option("--task", help="Evaluate on another task than the run's.")] = None,
    task_option: TaskOption = None,
    split: Annotated[str, typer.Option(help="Held-out split: test, or valid where the task has one.")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Evaluate a run's latest checkpoint on its task's held-out set."""
    from ssmgraph.blueprint import parse_overrides  # deferred (torch): see the module docstring
    from ssmgraph.train.trainer import evaluate_run

    result = evaluate_run(run_dir, task, parse_overrides(task_option, "-t") if task_option else None, split)
    if as_json:
        print_json(result)
        return
    table = Table(title=f"{run_dir} on {result['task']} ({split})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.4f}")
    stdout().print(table)


@user_errors
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A training run directory.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for the PNGs (default: the run directory).")] = None,
) -> None:
    """Draw loss and accuracy curves of a run as PNG files (needs matplotlib)."""
    from ssmgraph.train.plot import plot_run  # deferred (torch): see the module docstring

    for path in plot_run(run_dir, out or run_dir):
        err.print(f"wrote {path}", highlight=False)


@user_errors
def tasks(
    name: Annotated[str | None, typer.Argument(help="A task name: show its options.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the training tasks (built-in and from plugins), or show one task's options."""
    registry = get_registry()
    specs = [registry.task(name)] if name else [registry.tasks[k] for k in sorted(registry.tasks)]
    if name and specs[0] is None:
        raise SsmgraphError(f"no task {name!r}; {did_you_mean(name, registry.tasks)}")
    if as_json:
        print_json([s.to_json() for s in specs])
    elif name:
        stdout().print(params_table(specs[0].params, key="option", title=name))
    else:
        stdout().print(listing(("task", "plugin", "description"), [(s.name, s.plugin, s.doc) for s in specs], title="tasks"))


@user_errors
def generate(
    run_dir: Annotated[Path, typer.Argument(help="A saved model directory (`ssmgraph build ... --out DIR`, or a training run).")],
    prompt: Annotated[
        str, typer.Option("--prompt", "-p", help="Text to continue; encoded with the model's tokenizer, or as UTF-8 bytes.")
    ] = "",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", min=1, help="How many tokens to sample.")] = 200,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature; 0 picks the most likely token.")] = 0.8,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1, help="Sample among the k most likely tokens only.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed for sampling.")] = 0,
) -> None:
    """Continue a text prompt with a saved language model.

    The tokenizer is the one the model learned with: the text task's tokenizer option of its
    run, or the files of an imported Hugging Face model; byte-level models (vocabulary 256)
    read bytes. Recurrent models (SSMs, LSTM) decode in O(1) work per token; attention uses a KV cache.
    Example: `ssmgraph generate runs/mamba --prompt "The " -n 100 --temperature 0.7`
    """
    from ssmgraph.train.generate import generate_text  # deferred (torch): see the module docstring

    sys.stdout.write(generate_text(run_dir, prompt, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed) + "\n")
