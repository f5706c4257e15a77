"""Run a merge recipe: load, classify, check the method applies, merge, write out.

The output folder is written atomically (a temporary folder renamed at the end): the merged
model (``blueprint.yaml``, ``model.safetensors``, ``meta.json`` — ``ssmgraph.load(out)``
loads it), ``merge.yaml`` (the resolved recipe), ``report.md``/``report.json``, the PNGs a
method draws, and ``models/<name>/`` for methods that also produce their source models
(aligned, stitched, trained together).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ssmgraph.blueprint.yamlsafe import dump_yaml
from ssmgraph.errors import SsmgraphError
from ssmgraph.merge.context import LoadedModel, MergeContext, MergeError, MergeResult, classify, methods_for
from ssmgraph.merge.recipe import ModelSource, Recipe
from ssmgraph.merge.report import write_report
from ssmgraph.serialization import atomic_directory, check_replaceable, holds_current_folder, weights_to_save, write_model_files

RECIPE_FILE = "merge.yaml"


def load_source(source: ModelSource, task: Any, seed: int) -> LoadedModel:
    """A recipe model: a saved model, or a blueprint initialised with ``seed`` (fitted to the task)."""
    import ssmgraph
    from ssmgraph.blueprint import load_blueprint
    from ssmgraph.graph.compile import compile_blueprint
    from ssmgraph.train.loop import fit_params

    if source.checkpoint is not None:
        model = ssmgraph.load(source.checkpoint)
    else:
        assert source.blueprint is not None
        overrides = fit_params(source.blueprint, source.overrides, task) if task is not None else dict(source.overrides)
        torch.manual_seed(seed)
        model = compile_blueprint(load_blueprint(source.blueprint, overrides))
    return LoadedModel(source.name, source, model)


def plan(recipe: Recipe) -> tuple[list[LoadedModel], str, str, Any]:
    """Load the models and the task, classify them, and check that the method applies."""
    from ssmgraph.train.loop import make_task

    task = make_task(recipe.data.task, recipe.data.options) if recipe.data is not None else None
    models = [load_source(source, task, recipe.seed + i) for i, source in enumerate(recipe.models)]
    compatibility, reason = classify(models)
    method = recipe.method
    if not method.accepts(compatibility):
        usable = ", ".join(methods_for(compatibility)) or "none installed"
        raise MergeError(
            f"{recipe.source}: merge method {method.name!r} needs {method.needs.replace('_', '-')} models, but these are "
            f"{compatibility.replace('_', '-')}: {reason}. Methods that apply: {usable}"
        )
    if recipe.permute is not None and compatibility not in ("identical", "same_shape"):
        raise MergeError(f"{recipe.source}: permute aligns models of one blueprint; these are {compatibility.replace('_', '-')} ({reason})")
    return models, compatibility, reason, task


def _check_not_read_by(recipe: Recipe, out_dir: Path) -> None:
    """--overwrite must not delete a model the recipe reads, nor the folder we run in."""
    target = out_dir.resolve()
    for source in recipe.models:
        if source.checkpoint is not None and (target == Path(source.checkpoint).resolve() or target in Path(source.checkpoint).resolve().parents):
            raise MergeError(f"{recipe.source}: --out {out_dir} holds model {source.name!r}, which the merge reads; choose another --out")
    if holds_current_folder(out_dir):
        raise MergeError(f"--out {out_dir} is the current folder (or holds it); choose a new folder for the merged model")


def run_merge(recipe: Recipe, out_dir: Path, *, overwrite: bool = False, progress: bool = True) -> tuple[Path, MergeResult]:
    """Merge as the recipe says and write the result into ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        check_replaceable(out_dir)  # an earlier merge's output (a saved model), never a folder of other files
        if not overwrite:
            raise SsmgraphError(f"{out_dir} already exists; pass --overwrite to replace it")
        _check_not_read_by(recipe, out_dir)
    models, compatibility, reason, task = plan(recipe)
    started = time.perf_counter()
    with atomic_directory(out_dir) as tmp:
        alignment = None
        if recipe.permute is not None:
            from ssmgraph.merge.align import permute_onto_base

            alignment = permute_onto_base(models, recipe.permute, task, batch_size=recipe.data.batch_size if recipe.data else 32, seed=recipe.seed)
        context = MergeContext(recipe, models, compatibility, dict(recipe.parameters), tmp, task, progress)
        result = recipe.method.run(context)
        if not isinstance(result, MergeResult):
            raise MergeError(f"merge method {recipe.method.name!r} ({recipe.method.plugin}) returned {type(result).__name__}, not a MergeResult")
        _write_model(result.model, tmp, {"merge": {"method": recipe.method.name, "models": [m.name for m in models]}})
        for name, model in result.models.items():
            folder = tmp / "models" / name
            folder.mkdir(parents=True)
            _write_model(model, folder, {"merge": {"method": recipe.method.name, "role": name}})
        (tmp / RECIPE_FILE).write_text(dump_yaml(recipe.to_dict()), encoding="utf-8")
        summary = {
            "method": recipe.method.name,
            "plugin": recipe.method.plugin,
            "compatibility": compatibility,
            "compatibility_reason": reason,
            "models": {m.name: str(m.source.checkpoint or m.source.blueprint) for m in models},
            "parameters": recipe.parameters,
            "permute": recipe.permute,
            "alignment": alignment,
            "seconds": round(time.perf_counter() - started, 2),
        }
        write_report(tmp, summary, result)
    return out_dir, result


def _write_model(model: Any, folder: Path, extra_meta: dict[str, Any]) -> None:
    write_model_files(model, folder, weights_to_save(model, model.tied), extra_meta)


def read_report(out_dir: Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / "report.json").read_text(encoding="utf-8"))
