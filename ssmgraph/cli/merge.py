"""``ssmgraph merge`` and ``compare``: models combined by a recipe, and how alike their layers are.

The merge machinery is imported inside the commands: ``ssmgraph.merge.run`` loads scipy (most
of a second), and it and the rest (recipes, compatibility, CKA, tasks) load torch, which
``ssmgraph --help``, each command's help and every other command would otherwise pay for
(tests/cli/test_startup.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ssmgraph.cli.errors import user_errors, warn_plugin_problems
from ssmgraph.cli.options import TaskOption
from ssmgraph.cli.output import err, grid, inline_params, listing, progress, stdout
from ssmgraph.errors import SsmgraphError
from ssmgraph.registry.plugins import get_registry


@user_errors
def merge(
    recipe: Annotated[Path | None, typer.Argument(help="A merge recipe (YAML): merge_method, models, parameters, data.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Write the merged model and its report here.")] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace --out if it holds an earlier merge (a saved model); never a folder of other files or a model the recipe reads.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Check the recipe, load the models, say how alike they are and which methods apply; merge nothing."
        ),
    ] = False,
    methods: Annotated[
        bool, typer.Option("--methods", help="List the merge methods (built-in and from plugins) and their parameters.")
    ] = False,
    out_shard_size: Annotated[
        str,
        typer.Option(
            "--out-shard-size",
            help="mergekit configs: the largest safetensors shard written (500MB, 2GB, 5GiB).",
            show_default=True,
        ),
    ] = "5GB",
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
    if methods:
        _show_merge_methods()
        return
    if recipe is None:
        raise SsmgraphError("give a recipe file (or --methods to list the methods); docs/merging.md shows recipes")
    from ssmgraph.merge.compatibility import methods_for  # slow to import (torch, scipy): see the module docstring
    from ssmgraph.merge.recipe import load_recipe
    from ssmgraph.merge.run import plan, run_merge

    warn_plugin_problems()
    if _is_mergekit(recipe):
        _merge_mergekit(recipe, out_dir, overwrite=overwrite, dry_run=dry_run, shard_size=out_shard_size)
        return
    parsed = load_recipe(recipe)
    if dry_run:
        checked = plan(parsed)
        stdout().print(f"{len(checked.models)} models, {checked.compatibility.label}: {checked.reason}", highlight=False)
        stdout().print(f"{parsed.method.name} applies; so do: {', '.join(methods_for(checked.compatibility))}", highlight=False)
        return
    if out_dir is None:
        raise SsmgraphError("say where to write the merged model: --out DIR")
    with progress():
        folder, result = run_merge(parsed, out_dir, overwrite=overwrite, progress=err.is_terminal)
    for title, header, rows in result.tables:
        stdout().print(grid(header, [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in rows], title=title))
    err.print(f"merged model and report written to {folder} (report.md)", highlight=False)


def _is_mergekit(path: Path) -> bool:
    from ssmgraph.blueprint.yamlsafe import load_file
    from ssmgraph.merge.mergekit.dialect import is_mergekit

    return is_mergekit(load_file(path, str(path)))


def _merge_mergekit(path: Path, out_dir: Path | None, *, overwrite: bool, dry_run: bool, shard_size: str) -> None:
    """A config in mergekit's dialect: merged tensor by tensor from Hugging Face folders (or ssmgraph models)."""
    from ssmgraph.merge.mergekit.dialect import load_mergekit  # slow to import (torch): see the module docstring
    from ssmgraph.merge.mergekit.engine import plan_merge
    from ssmgraph.merge.mergekit.output import parse_size, run_mergekit

    config = load_mergekit(path)
    parse_size(shard_size)
    if dry_run:
        checked = plan_merge(config)
        stdout().print(
            f"mergekit config: {config.method.name} of {len(config.models())} models, "
            f"{len(checked.tensors)} tensors, {checked.layers} layers",
            highlight=False,
        )
        return
    if out_dir is None:
        raise SsmgraphError("say where to write the merged model: --out DIR")
    with progress():
        summary = run_mergekit(config, out_dir, overwrite=overwrite, shard_size=shard_size)
    err.print(
        f"merged {summary['tensors']} tensors ({summary['layers']} layers, {summary['shards']} shard(s)) into {out_dir}",
        highlight=False,
    )


def _show_merge_methods() -> None:
    from ssmgraph.merge.compatibility import Compatibility  # slow to import (torch): see the module docstring

    rows = [
        (
            spec.name,
            Compatibility(spec.needs).label + (" + data" if spec.data else ""),
            spec.plugin,
            inline_params(spec.params),
            spec.doc,
        )
        for spec in get_registry().merge_methods.values()
    ]
    stdout().print(listing(("method", "needs", "plugin", "parameters", "description"), rows, title="merge methods", fold=True))


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
    from ssmgraph.blueprint import parse_overrides  # slow to import (torch): see the module docstring
    from ssmgraph.merge.compare import compare_models
    from ssmgraph.train.fitting import make_task

    with progress():
        result = compare_models(
            model_a,
            model_b,
            make_task(task, parse_overrides(task_option or [], "-t")),
            out_dir,
            batches=batches,
            batch_size=batch_size,
        )
    rows = [[name, *(f"{v:.3f}" for v in row)] for name, row in zip(result["layers_a"], result["cka"])]
    stdout().print(grid(["layer", *result["layers_b"]], rows, title=f"linear CKA: rows {result['a']}, columns {result['b']}"))
    err.print(f"heatmap written to {result['png']}", highlight=False)
