"""The ``ssmgraph`` command line: a thin face over the library.

Every command is a call into the library; a mistake in the user's input prints a located
message on stderr and exits with code 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from ssmgraph.errors import SsmgraphError
from ssmgraph.interop.cli import export_app, import_app

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="ssmgraph",
    help=(
        "Build, train and merge sequence models declared as YAML blueprints.\n\n"
        "Start with `ssmgraph build gpt` (a shipped blueprint), `ssmgraph blocks` (the blocks you can use) "
        "and docs/blueprint.md (the format)."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)
err = Console(stderr=True)


def _stdout() -> Console:
    """A console for tables: the terminal's width, or wide enough not to wrap when piped."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def user_errors(fn: F) -> F:
    """Print an SsmgraphError (the user's to fix) on stderr and exit 2, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SsmgraphError as exc:
            sys.stderr.write(exc.render() + "\n")  # plain: editors parse file:line:col
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        from ssmgraph import __version__
        from ssmgraph.registry.plugins import get_registry

        try:
            registry = get_registry()
        except SsmgraphError as exc:  # e.g. two plugins provide one block name
            sys.stderr.write(exc.render() + "\n")
            raise typer.Exit(exc.exit_code) from None
        plugins = [p for p in registry.plugins.values() if not p.builtin]
        extra = ", ".join(f"{p.dist}-{p.version}" + ("" if p.status == "loaded" else f" ({p.status})") for p in plugins)
        _stdout().print(f"ssmgraph {__version__}" + (f" (plugins: {extra})" if extra else ""), highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and installed plugins.")] = False,
) -> None:
    """ssmgraph: sequence models as YAML blueprints."""


def _warn_plugin_problems() -> None:
    from ssmgraph.registry.plugins import get_registry

    for problem in get_registry().problems:
        err.print(f"warning: {problem} (skipped; `ssmgraph plugins` shows details)", markup=False, highlight=False)


SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a blueprint parameter, e.g. `--set d_model=256` (repeatable)."),
]


@app.command()
@user_errors
def build(
    blueprint: Annotated[str, typer.Argument(help="A blueprint file, or the name of a shipped one (e.g. `gpt`, `lstm`).")],
    set_: SetOption = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Build one named view of a multi-model blueprint.")] = None,
    out_dir: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Save the built model here (resolved blueprint + safetensors); replaces only a model saved there before."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of a table.")] = False,
    graph: Annotated[Optional[Path], typer.Option("--graph", "-g", help="Draw the graph: .dot, .mmd, or .svg/.png (needs Graphviz).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed for the initial weights.")] = 0,
) -> None:
    """Check a blueprint, build its model and show a summary.

    Every mistake in the file is reported with its file:line:col. Examples:

    * `ssmgraph build gpt`
    * `ssmgraph build my.yaml --set d_model=256 --set layers=8 --out runs/init`
    * `ssmgraph build pair --model lstm --graph pair.mmd`
    """
    import torch

    from ssmgraph import save
    from ssmgraph.blueprint import load_blueprint, parse_overrides
    from ssmgraph.graph.compile import compile_blueprint
    from ssmgraph.graph.export import write_graph
    from ssmgraph.graph.summary import summarize, summary_table
    from ssmgraph.serialization import check_replaceable

    _warn_plugin_problems()
    if out_dir is not None:
        check_replaceable(out_dir)
    torch.manual_seed(seed)
    compiled = compile_blueprint(load_blueprint(blueprint, parse_overrides(set_ or [])), model=model)
    if as_json:
        sys.stdout.write(json.dumps(summarize(compiled), indent=2) + "\n")
    else:
        _stdout().print(summary_table(compiled))
    if graph is not None:
        write_graph(compiled, graph)
        err.print(f"graph written to {graph}", highlight=False)
    if out_dir is not None:
        save(compiled, out_dir)
        err.print(f"model saved to {out_dir}", highlight=False)


TaskOption = Annotated[
    Optional[list[str]],
    typer.Option("--task-option", "-t", help="Set a task option, e.g. `-t seq_len=256` (repeatable; `ssmgraph tasks NAME` lists them)."),
]


@app.command()
@user_errors
def train(
    blueprint: Annotated[str, typer.Argument(help="A blueprint file or shipped name; with --resume, ignored (give the run directory as --out).")] = "",
    task: Annotated[Optional[str], typer.Option("--task", help="The task (`ssmgraph tasks` lists them); or `task:` in --config.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="The run directory: checkpoints, metrics.jsonl, run.json.")] = Path("runs/latest"),
    steps: Annotated[Optional[int], typer.Option(min=1, help="Optimizer steps (overrides the config).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="A train config YAML (docs/training.md lists its settings).")] = None,
    set_: SetOption = None,
    task_option: TaskOption = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, help="Sequences per step (overrides the config).")] = None,
    lr: Annotated[Optional[float], typer.Option(min=0.0, help="Peak learning rate (overrides the config).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for weights and data (overrides the config).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Train one view of a multi-model blueprint.")] = None,
    resume_run: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its latest checkpoint, bit for bit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    show: Annotated[bool, typer.Option(help="Show the trained model on a few held-out examples.")] = True,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing run in --out instead of refusing (once the new run's task and blueprint check out).")
    ] = False,
) -> None:
    """Train a blueprint on a built-in or plugin task.

    Checkpoints (safetensors) are written atomically; Ctrl-C saves and exits; `--resume`
    continues with the same losses an uninterrupted run would have. Several processes:
    `torchrun --nproc_per_node 2 -m ssmgraph train ...`. Examples:

    * `ssmgraph train mamba --task selective_copying --steps 500 --out runs/sc`
    * `ssmgraph train classifier --task digits --set mixer=mix.s4d --out runs/digits`
    * `ssmgraph train gpt --task bytes -t path=my_texts/ --out runs/lm`
    """
    from ssmgraph.blueprint import parse_overrides
    from ssmgraph.train import load_config, resume, train as run_training

    _warn_plugin_problems()
    if resume_run:
        result = resume(out, steps=steps, progress=not quiet)
    else:
        if not blueprint:
            raise SsmgraphError("name a blueprint to train (e.g. `ssmgraph train gpt --task bytes`), or use --resume")
        settings: dict[str, Any] = {k: v for k, v in (("steps", steps), ("batch_size", batch_size), ("lr", lr), ("seed", seed), ("task", task)) if v is not None}
        cfg = load_config(config, settings)
        if task_option:
            cfg.task_options = {**cfg.task_options, **parse_overrides(task_option, "-t")}
        overrides = parse_overrides(set_ or [])
        result = run_training(blueprint, out, cfg, overrides=overrides, model_view=model, progress=not quiet, overwrite=overwrite)
    _report_training(result, show and not quiet)


def _report_training(result: Any, show: bool) -> None:
    from ssmgraph.train.metrics import read_metrics
    from ssmgraph.train.distributed import current

    if not current().is_main:
        return
    if show and result.task is not None:
        from ssmgraph.train.examples import examples_table

        _stdout().print(examples_table(result.model, result.task))
    evals = [r for r in read_metrics(result.run_dir) if r["split"] == "eval"]
    if result.interrupted:
        err.print(f"interrupted: saved step {result.step} to {result.run_dir}; continue with `ssmgraph train --resume --out {result.run_dir}`", highlight=False)
    if evals:
        last = evals[-1]
        extra = f", {last['bits']:.3f} bits/token" if "bits" in last else ""
        err.print(f"step {last['step']}: held-out loss {last['loss']:.4f}, accuracy {last['accuracy']:.3f}{extra}", highlight=False)
    err.print(f"run saved in {result.run_dir} (`ssmgraph eval {result.run_dir}`, `ssmgraph plot {result.run_dir}`)", highlight=False)


@app.command("eval")
@user_errors
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A training run directory.")],
    task: Annotated[Optional[str], typer.Option("--task", help="Evaluate on another task than the run's.")] = None,
    task_option: TaskOption = None,
    split: Annotated[str, typer.Option(help="Held-out split: test, or valid where the task has one.")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Evaluate a run's latest checkpoint on its task's held-out set."""
    from ssmgraph.blueprint import parse_overrides
    from ssmgraph.train import evaluate_run

    result = evaluate_run(run_dir, task, parse_overrides(task_option, "-t") if task_option else None, split)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    table = Table(title=f"{run_dir} on {result['task']} ({split})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.4f}")
    _stdout().print(table)


@app.command()
@user_errors
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A training run directory.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for the PNGs (default: the run directory).")] = None,
) -> None:
    """Draw loss and accuracy curves of a run as PNG files (needs matplotlib)."""
    from ssmgraph.train.plot import plot_run

    for path in plot_run(run_dir, out or run_dir):
        err.print(f"wrote {path}", highlight=False)


@app.command()
@user_errors
def tasks(
    name: Annotated[Optional[str], typer.Argument(help="A task name: show its options.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the training tasks (built-in and from plugins), or show one task's options."""
    from ssmgraph.registry.plugins import get_registry

    registry = get_registry()
    specs = [registry.task(name)] if name else [registry.tasks[k] for k in sorted(registry.tasks)]
    if name and specs[0] is None:
        from ssmgraph.errors import did_you_mean

        raise SsmgraphError(f"no task {name!r}; {did_you_mean(name, registry.tasks)}")
    if as_json:
        sys.stdout.write(json.dumps([s.to_json() for s in specs], indent=2) + "\n")
        return
    table = Table(title="tasks" if not name else name)
    if name:
        for column in ("option", "type", "default", "range", "description"):
            table.add_column(column)
        for param in specs[0].to_json()["params"]:
            table.add_row(param["name"], param["type"], "required" if param["required"] else json.dumps(param["default"]), param["range"] or "", param["doc"])
    else:
        for column in ("task", "plugin", "description"):
            table.add_column(column, style="cyan" if column == "task" else None)
        for spec in specs:
            table.add_row(spec.name, spec.plugin, spec.doc)
    _stdout().print(table)


@app.command()
@user_errors
def generate(
    run_dir: Annotated[Path, typer.Argument(help="A saved model directory (`ssmgraph build ... --out DIR`, or a training run).")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text to continue; encoded as UTF-8 bytes (byte-level models, vocab 256).")] = "",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", min=1, help="How many tokens to sample.")] = 200,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature; 0 picks the most likely token.")] = 0.8,
    top_k: Annotated[Optional[int], typer.Option("--top-k", min=1, help="Sample among the k most likely tokens only.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed for sampling.")] = 0,
) -> None:
    """Continue a text prompt with a saved byte-level language model.

    Recurrent models (SSMs, LSTM) decode in O(1) work per token; attention uses a KV cache.
    Example: `ssmgraph generate runs/mamba --prompt "The " -n 100 --temperature 0.7`
    """
    import torch

    from ssmgraph import load
    from ssmgraph.train.loop import position_limit, token_vocab

    model = load(run_dir).eval()
    vocab = token_vocab(model)
    ids = list(prompt.encode("utf-8")) or [ord("\n")]
    if vocab != 256:
        has = "reads no token ids" if vocab is None else f"has vocabulary {vocab}"
        raise SsmgraphError(f"{run_dir}: generate works on byte-level language models (vocabulary 256); this model {has}")
    _check_generation_length(run_dir, position_limit(model, learned_only=True), len(ids), max_new_tokens)
    generator = torch.Generator().manual_seed(seed)
    tokens = model.generate(torch.tensor([ids]), max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
    sys.stdout.write(bytes(tokens[0].tolist()).decode("utf-8", errors="replace") + "\n")


def _check_generation_length(run_dir: Path, limit: int | None, prompt_len: int, new: int) -> None:
    """Learned positions end at max_len: refuse up front rather than fail mid-generation (the
    last new token is returned, not read, so it needs no position)."""
    if limit is None or prompt_len + new - 1 <= limit:
        return
    fix = f"ask for at most -n {limit - prompt_len + 1}" if prompt_len <= limit else f"shorten the prompt to at most {limit} bytes"
    raise SsmgraphError(f"{run_dir}: the prompt ({prompt_len} bytes) and -n {new} new tokens exceed the model's learned positions (max_len {limit}); {fix}")


@app.command()
@user_errors
def blocks(
    pattern: Annotated[str, typer.Argument(help="A block name (shows its parameters), a pattern such as `mix.*`, or part of a name such as `attention`.")] = "*",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: a list of {name, role, plugin, params, ...}.")] = False,
) -> None:
    """List the blocks you can use in a blueprint, or show one block's parameters."""
    from ssmgraph.errors import did_you_mean
    from ssmgraph.registry.plugins import get_registry

    registry = get_registry()
    _warn_plugin_problems()
    exact = registry.get(pattern)
    specs = [exact] if exact else registry.search(pattern)
    if as_json:  # a search that matches nothing is an empty list to a script
        sys.stdout.write(json.dumps([s.to_json() for s in specs], indent=2) + "\n")
        return
    if not specs:
        raise SsmgraphError(f"no block matches {pattern!r}; {did_you_mean(pattern, registry.blocks)}")
    if exact:
        _show_block(exact)
        return
    table = Table(title=f"{len(specs)} blocks")
    for column in ("name", "role", "plugin", "step", "description"):
        table.add_column(column, style="cyan" if column == "name" else None)
    for spec in specs:
        step = spec.step if isinstance(spec.step, bool) else "by args"
        table.add_row(spec.name, spec.role, spec.plugin, str(step).lower(), spec.doc)
    _stdout().print(table)
    _stdout().print("Show one block's parameters with `ssmgraph blocks NAME`.", style="dim")


def _show_block(spec: Any) -> None:
    info = spec.to_json()
    _stdout().print(f"[bold cyan]{spec.name}[/] ({spec.role}, from {spec.plugin}): {spec.doc}")
    if spec.reference:
        _stdout().print(f"reference: {spec.reference}", highlight=False)
    caps = ", ".join(f"{k}: {str(v).lower()}" for k, v in info["capabilities"].items())
    _stdout().print(f"inputs: {', '.join(spec.inputs)}{' (two or more)' if spec.variadic else ''} · {caps}", highlight=False)
    table = Table()
    for column in ("parameter", "type", "default", "range", "description"):
        table.add_column(column, style="cyan" if column == "parameter" else None)
    for param in info["params"]:
        default = "required" if param["required"] else json.dumps(param["default"])
        table.add_row(param["name"], param["type"], default, param["range"] or "", param["doc"])
    _stdout().print(table)


@app.command()
@user_errors
def merge(
    recipe: Annotated[Optional[Path], typer.Argument(help="A merge recipe (YAML): merge_method, models, parameters, data.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the merged model and its report here.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it holds an earlier merge (a saved model); never a folder of other files or a model the recipe reads.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the recipe, load the models, say how alike they are and which methods apply; merge nothing.")] = False,
    methods: Annotated[bool, typer.Option("--methods", help="List the merge methods (built-in and from plugins) and their parameters.")] = False,
) -> None:
    """Merge models as a recipe says: weight averaging, TIES, DARE, SLERP, mutual training, ...

    The recipe names the models (saved runs or blueprints), the method and its parameters,
    and the data to probe, train or evaluate on. A compatibility check runs first (identical
    blueprint / same shapes / alignable / heterogeneous); a method that cannot apply says why
    and which methods can. The output folder loads with `ssmgraph.load` and holds
    report.md, report.json and plots. Examples:

    * `ssmgraph merge --methods`
    * `ssmgraph merge soup.yaml --out runs/soup`
    * `ssmgraph merge mutual.yaml --out runs/trio --dry-run`
    """
    from ssmgraph.merge.recipe import load_recipe

    if methods:
        _show_merge_methods()
        return
    if recipe is None:
        raise SsmgraphError("give a recipe file (or --methods to list the methods); docs/merging.md shows recipes")
    _warn_plugin_problems()
    parsed = load_recipe(recipe)
    if dry_run:
        from ssmgraph.merge.context import methods_for
        from ssmgraph.merge.run import plan

        models, compatibility, reason, _ = plan(parsed)
        _stdout().print(f"{len(models)} models, {compatibility.replace('_', '-')}: {reason}", highlight=False)
        _stdout().print(f"{parsed.method.name} applies; so do: {', '.join(methods_for(compatibility))}", highlight=False)
        return
    if out_dir is None:
        raise SsmgraphError("say where to write the merged model: --out DIR")
    from ssmgraph.merge.run import run_merge

    folder, result = run_merge(parsed, out_dir, overwrite=overwrite, progress=err.is_terminal)
    for title, header, rows in result.tables:
        table = Table(title=title)
        for column in header:
            table.add_column(column)
        for row in rows:
            table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
        _stdout().print(table)
    err.print(f"merged model and report written to {folder} (report.md)", highlight=False)


def _show_merge_methods() -> None:
    from ssmgraph.registry.plugins import get_registry

    table = Table(title="merge methods")
    for column in ("method", "needs", "plugin", "parameters", "description"):
        table.add_column(column, style="cyan" if column == "method" else None, overflow="fold")
    for spec in get_registry().merge_methods.values():
        params = ", ".join(f"{p.name}={p.default}" if not p.required else p.name for p in spec.params)
        table.add_row(spec.name, spec.needs.replace("_", "-") + (" + data" if spec.data else ""), spec.plugin, params, spec.doc)
    _stdout().print(table)


@app.command()
@user_errors
def compare(
    model_a: Annotated[Path, typer.Argument(help="A saved model or training run.")],
    model_b: Annotated[Path, typer.Argument(help="Another saved model or training run (any architecture).")],
    task: Annotated[str, typer.Option("--task", help="The task whose held-out inputs are fed to both models.")],
    task_option: TaskOption = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Where to write cka.png and cka.json.")] = Path("."),
    batches: Annotated[int, typer.Option(help="Held-out batches to compare on.", min=1)] = 8,
    batch_size: Annotated[int, typer.Option(help="Sequences per batch.", min=1)] = 32,
) -> None:
    """Linear CKA between every layer of two models, as a heatmap (PNG) and a table.

    Both models read the same held-out inputs of the task; each layer's hidden states are
    compared (1 = the same up to rotation and scale, 0 = unrelated). CKA ignores rotations, so
    it measures shared structure, not whether one model's features can be plugged into the
    other. Example: `ssmgraph compare runs/gpt runs/mamba --task induction_heads`
    """
    from ssmgraph.blueprint import parse_overrides
    from ssmgraph.merge.compare import compare_models
    from ssmgraph.train.loop import make_task

    result = compare_models(model_a, model_b, make_task(task, parse_overrides(task_option or [], "-t")), out_dir, batches=batches, batch_size=batch_size)
    table = Table(title=f"linear CKA: rows {result['a']}, columns {result['b']}")
    table.add_column("layer")
    for name in result["layers_b"]:
        table.add_column(name)
    for name, row in zip(result["layers_a"], result["cka"]):
        table.add_row(name, *(f"{v:.3f}" for v in row))
    _stdout().print(table)
    err.print(f"heatmap written to {result['png']}", highlight=False)


@app.command()
@user_errors
def check(
    block: Annotated[str, typer.Argument(help="The block to check, e.g. `mix.s4d` or a plugin's `mix.my_mixer`.")],
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", "-s", help="Build the block with this argument, e.g. `--set heads=2` (repeatable)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: one {block, check, status, detail} per check.")] = False,
) -> None:
    """Run the conformance kit on a block: does it keep the block contract?

    Checks shapes and dtypes, gradients, causality, step == forward, state carrying, masks,
    state-dict and blueprint round trips, meta-device construction, documentation and
    `torch.compile`, chosen by the capabilities the block declares (docs/plugins.md).
    Without `--set` it checks every argument set the spec lists in `examples`. Exits 1 when
    a check fails. Examples:

    * `ssmgraph check mix.s4d`
    * `ssmgraph check mix.attention --set heads=2 --set rope=true`
    """
    from ssmgraph.blueprint import parse_overrides
    from ssmgraph.testing.conformance import CHECKS, block_cases, make_case, run_check

    _warn_plugin_problems()
    try:
        cases = [make_case(block, parse_overrides(set_))] if set_ else block_cases([block])
    except ValueError as exc:
        raise SsmgraphError(str(exc)) from None
    rows = [(case, run_check(chk, case)) for case in cases for chk in CHECKS]
    failed = sum(result.status == "failed" for _, result in rows)
    if as_json:
        sys.stdout.write(json.dumps([{"block": c.label, "check": r.check, "status": r.status, "detail": r.detail} for c, r in rows], indent=2) + "\n")
    else:
        style = {"passed": "green", "failed": "bold red", "skipped": "dim"}
        table = Table(title=f"conformance of {block}: {len(rows) - failed} of {len(rows)} checks pass or do not apply")
        for column in ("configuration", "check", "result", "detail"):
            table.add_column(column, style="cyan" if column == "configuration" else None, overflow="fold")
        for case, result in rows:
            table.add_row(case.label, result.check, f"[{style[result.status]}]{result.status}[/]", result.detail)
        _stdout().print(table)
    if failed:
        raise typer.Exit(1)


plugin_app = typer.Typer(help="Start a block plugin of your own (see docs/plugins.md).", no_args_is_help=True)
app.add_typer(plugin_app, name="plugin")
app.add_typer(import_app, name="import")
app.add_typer(export_app, name="export")


@plugin_app.command("new")
@user_errors
def plugin_new(
    name: Annotated[str, typer.Argument(help="The plugin's name, e.g. `my_mixer`: package ssmgraph-my-mixer, block mix.my_mixer.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The folder to create the package in.")] = Path("."),
) -> None:
    """Write a working block-plugin package to start from.

    It holds a causal depthwise-convolution mixer with a recurrent step, the entry point
    that makes ssmgraph find it, and tests that run the conformance kit. Then:

    * `cd ssmgraph-NAME && pip install -e '.[test]'`
    * `ssmgraph check mix.NAME` and `pytest`
    """
    from ssmgraph.plugin_template import new_plugin

    target = new_plugin(name, out_dir)
    err.print(f"plugin package written to {target}; next: cd {target} && pip install -e '.[test]' && pytest", markup=False, highlight=False)


@app.command()
@user_errors
def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: name, package, version, status, error, blocks.")] = False,
) -> None:
    """List plugins (built-in and installed through the `ssmgraph` entry-point group)."""
    from ssmgraph.registry.plugins import get_registry

    records = list(get_registry().plugins.values())
    if as_json:
        sys.stdout.write(json.dumps([r.to_json() for r in records], indent=2) + "\n")
        return
    table = Table(title="plugins")
    for column in ("plugin", "package", "version", "status", "blocks"):
        table.add_column(column, style="cyan" if column == "plugin" else None)
    for record in records:
        status = record.status if not record.error else f"{record.status}: {record.error}"
        name = record.name.removeprefix("ssmgraph.") + (" (built-in)" if record.builtin else "")
        table.add_row(name, record.dist, record.version, status, ", ".join(record.blocks))
    _stdout().print(table)


if __name__ == "__main__":  # pragma: no cover
    app()
