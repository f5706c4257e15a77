"""Run a merge recipe: load, classify, check the method applies, merge, write out.

The output folder is written atomically (a temporary folder renamed at the end): the merged
model (``blueprint.yaml``, ``model.safetensors``, ``meta.json`` — ``ssmgraph.load(out)``
loads it; an imported base model's Hugging Face config and tokenizer files come along, ``hf/``),
``merge.yaml`` (the resolved recipe), ``report.md``/``report.json``, the PNGs a
method draws, and ``models/<name>/`` for methods that also produce their source models
(aligned, stitched, trained together).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssmgraph.blueprint import load_blueprint
from ssmgraph.blueprint.yamlsafe import dump_yaml
from ssmgraph.folders import atomic_directory, holds_current_folder
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.interop.hf.metadata import carried_metadata
from ssmgraph.merge.align import permute_onto_base
from ssmgraph.merge.compatibility import Compatibility, classify, methods_for
from ssmgraph.merge.context import MergeContext, MergeError, MergeResult
from ssmgraph.merge.models import LoadedModel
from ssmgraph.merge.recipe import ModelSource, Recipe
from ssmgraph.merge.report import write_report
from ssmgraph.progress import phase
from ssmgraph.safeio import check_fields, read_json
from ssmgraph.serialization import load as load_model
from ssmgraph.serialization import model_directory, replacing, weights_to_save, write_model_files
from ssmgraph.train.fitting import fit_params, make_task
from ssmgraph.train.tasks.base import Task

RECIPE_FILE = "merge.yaml"


def load_source(source: ModelSource, task: Task | None, seed: int) -> LoadedModel:
    """A recipe model: a saved model, or a blueprint initialised with ``seed`` (fitted to the task)."""
    if source.checkpoint is not None:
        model = load_model(source.checkpoint)
    else:
        assert source.blueprint is not None
        overrides = fit_params(source.blueprint, source.overrides, task) if task is not None else dict(source.overrides)
        torch.manual_seed(seed)
        model = compile_blueprint(load_blueprint(source.blueprint, overrides))
    return LoadedModel(source.name, source, model)


@dataclass(frozen=True)
class MergePlan:
    """What a recipe merges, checked before anything is written: the loaded models, how alike
    they are (and why), and the data task (None without ``data:``)."""

    models: list[LoadedModel]
    compatibility: Compatibility
    reason: str
    task: Task | None


def plan(recipe: Recipe) -> MergePlan:
    """Load the models and the task, classify them, and check that the method applies."""
    task = make_task(recipe.data.task, recipe.data.options) if recipe.data is not None else None
    models = [load_source(source, task, recipe.seed + i) for i, source in enumerate(recipe.models)]
    compatibility, reason = classify(models)
    method = recipe.method
    if not method.accepts(compatibility):
        usable = ", ".join(methods_for(compatibility)) or "none installed"
        raise MergeError(
            f"{recipe.source}: merge method {method.name!r} needs {Compatibility(method.needs).label} models, but these are "
            f"{compatibility.label}: {reason}. Methods that apply: {usable}"
        )
    if recipe.permute is not None and not compatibility.within(Compatibility.SAME_SHAPE):
        raise MergeError(f"{recipe.source}: permute aligns models of one blueprint; these are {compatibility.label} ({reason})")
    return MergePlan(models, compatibility, reason, task)


def _check_not_read_by(recipe: Recipe, out_dir: Path) -> None:
    """--overwrite must not delete a model the recipe reads (the folder named, or the checkpoint
    actually read from a run), nor the folder we run in."""
    for source in recipe.models:
        if source.checkpoint is None:
            continue
        named = Path(source.checkpoint)
        read = model_directory(named) if named.is_dir() else named
        if any(
            out_dir.resolve() == folder.resolve() or out_dir.resolve() in folder.resolve().parents for folder in (named, read)
        ):
            raise MergeError(
                f"{recipe.source}: --out {out_dir} holds model {source.name!r}, which the merge reads; choose another --out"
            )
    if holds_current_folder(out_dir):
        raise MergeError(f"--out {out_dir} is the current folder (or holds it); choose a new folder for the merged model")


def run_merge(recipe: Recipe, out_dir: Path, *, overwrite: bool = False, progress: bool = True) -> tuple[Path, MergeResult]:
    """Merge as the recipe says and write the result into ``out_dir`` (atomically), holding
    ``out_dir``'s lock from the first check to the last write."""
    # an earlier merge's output (a saved model) is replaced, never a folder of other files
    with replacing(Path(out_dir), overwrite, what="--out") as target:
        return _merge_into(recipe, target, progress)


def _merge_into(recipe: Recipe, out_dir: Path, progress: bool) -> tuple[Path, MergeResult]:
    if out_dir.exists():
        _check_not_read_by(recipe, out_dir)
    with phase("loading"):
        merge_plan = plan(recipe)
    models = merge_plan.models
    started = time.perf_counter()
    with atomic_directory(out_dir) as tmp:
        alignment = None
        if recipe.permute is not None:
            batch_size = recipe.data.batch_size if recipe.data else 32
            with phase("aligning"):
                alignment = permute_onto_base(models, recipe.permute, merge_plan.task, batch_size=batch_size, seed=recipe.seed)
        context = MergeContext(recipe, models, merge_plan.compatibility, dict(recipe.parameters), tmp, merge_plan.task, progress)
        with phase(f"merging ({recipe.method.name})"):
            result = recipe.method.runner()(context)
        if not isinstance(result, MergeResult):
            raise MergeError(
                f"merge method {recipe.method.name!r} ({recipe.method.plugin}) returned {type(result).__name__}, not a MergeResult"
            )
        context.check_finite(result)  # E701: a model of inf/NaN is never written
        with phase("writing"):
            base = next((m for m in models if m.name == recipe.base_model), models[0])
            carried = carried_metadata(base.source.checkpoint, base.model, result.model, tmp)  # HF config, tokenizer files
            _write_model(
                result.model, tmp, {"merge": {"method": recipe.method.name, "models": [m.name for m in models]}, **carried}
            )
            for name, model in result.models.items():
                folder = tmp / "models" / name
                folder.mkdir(parents=True)
                _write_model(model, folder, {"merge": {"method": recipe.method.name, "role": name}})
            (tmp / RECIPE_FILE).write_text(dump_yaml(recipe.to_dict()), encoding="utf-8")
            summary = {
                "method": recipe.method.name,
                "plugin": recipe.method.plugin,
                "compatibility": merge_plan.compatibility.value,
                "compatibility_reason": merge_plan.reason,
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
    """report.json of a merge's output folder."""
    path, fix = Path(out_dir) / "report.json", "run the merge again to write a new report"
    report = read_json(path, what="cannot read the merge report", error=MergeError, fix=fix, finite=False)
    return check_fields(report, {}, source=path, error=MergeError, fix=fix)  # an object, whatever its keys
