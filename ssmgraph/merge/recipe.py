"""Merge recipes: a YAML file saying which models to merge, how, on what data.

```yaml
merge_method: ties                 # `ssmgraph merge --methods` lists them
models:
  - {name: a, checkpoint: runs/a}  # a run or saved-model directory
  - {name: b, checkpoint: runs/b, parameters: {weight: 0.7}}
  - {name: c, blueprint: mamba, set: {d_model: 64}}   # a blueprint, freshly initialised
base_model: a                      # the task-arithmetic base, the stitch bottom, ...
parameters: {density: 0.5}         # the method's parameters (checked against its schema)
permute: true                      # weight matching onto the first model first
data: {task: digits, batch_size: 64, eval_batches: 8}
seed: 0
```

Values keep their file:line marks, so every mistake is reported where it was made, like
blueprint errors (E110 unknown key, E111 missing key, E112 wrong value).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssmgraph.blueprint.names import submodule_name_ok
from ssmgraph.blueprint.yamlsafe import load_file, load_yaml
from ssmgraph.errors import Collector, Mark, did_you_mean
from ssmgraph.merge.recipe_checks import check_finite, check_folder_name, check_mapping, key_mark_of, mark_of
from ssmgraph.registry.plugins import Registry, get_registry
from ssmgraph.registry.specs import MergeMethodSpec, Param
from ssmgraph.train.fitting import absolute_paths


@dataclass(frozen=True)
class ModelSource:
    """One model of a recipe: a saved model directory, or a blueprint to initialise."""

    name: str
    checkpoint: Path | None = None
    blueprint: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    mark: Mark | None = None


@dataclass(frozen=True)
class DataSpec:
    """The task a merge probes, trains or evaluates on."""

    task: str
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 32
    eval_batches: int = 16
    mark: Mark | None = None

    @property
    def eval_size(self) -> int:
        return self.batch_size * self.eval_batches


@dataclass(frozen=True)
class Recipe:
    method: MergeMethodSpec
    models: tuple[ModelSource, ...]
    parameters: dict[str, Any]
    base_model: str | None = None
    permute: dict[str, Any] | None = None
    data: DataSpec | None = None
    seed: int = 0
    source: str = "<recipe>"
    directory: Path = Path(".")
    """Where the recipe lives: relative paths in it (checkpoints, a teacher, a base) start here."""

    def model(self, name: str) -> ModelSource:
        return next(m for m in self.models if m.name == name)

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe (defaults filled in), written next to the merged model."""
        models = []
        for m in self.models:
            entry: dict[str, Any] = {"name": m.name}
            if m.checkpoint is not None:  # absolute: the written recipe re-runs from any folder
                entry["checkpoint"] = str(Path(m.checkpoint).resolve())
            if m.blueprint is not None:
                entry["blueprint"] = m.blueprint
            if m.overrides:
                entry["set"] = dict(m.overrides)
            if m.parameters:
                entry["parameters"] = dict(m.parameters)
            models.append(entry)
        out: dict[str, Any] = {
            "merge_method": self.method.name,
            "models": models,
            "parameters": dict(self.parameters),
            "seed": self.seed,
        }
        if self.base_model:
            out["base_model"] = self.base_model
        if self.permute is not None:
            out["permute"] = dict(self.permute)
        if self.data is not None:
            out["data"] = {
                "task": self.data.task,
                "options": dict(self.data.options),
                "batch_size": self.data.batch_size,
                "eval_batches": self.data.eval_batches,
            }
        return out


TOP_KEYS = ("merge_method", "models", "base_model", "parameters", "permute", "data", "seed")
MODEL_KEYS = ("name", "checkpoint", "blueprint", "set", "parameters")
PER_MODEL = (Param("weight", float, 1.0, "this model's weight in a weighted merge"),)
PERMUTE = (
    Param("iters", int, 20, "weight-matching rounds (Git Re-Basin coordinate descent)", min=1),
    Param("seed", int, 0, "seed of the order in which spaces are visited", min=0),
    Param(
        "match",
        str,
        "weights",
        "weights: every space by weight matching; activations: the residual stream by activation "
        "matching on the recipe's data (needs `data:`), the spaces inside blocks by weight matching",
        choices=("weights", "activations"),
    ),
    Param("probe_batches", int, 8, "training batches of the recipe's task that activation matching reads", min=1),
)
DATA = (
    Param("task", str, doc="the task (`ssmgraph tasks` lists them)"),
    Param("options", dict, {}, "the task's options, e.g. {seq_len: 64}"),
    Param("batch_size", int, 32, "sequences per batch", min=1),
    Param("eval_batches", int, 16, "held-out batches per evaluation", min=1),
)


def parse_recipe(raw: Any, source: str, base_dir: Path) -> Recipe:
    """Check a loaded recipe mapping and resolve it (method from the registry, paths from ``base_dir``)."""
    errors = Collector()
    top = Mark(source, 1, 1)
    if not isinstance(raw, dict):
        errors.add("E112", "a merge recipe is a mapping: merge_method, models, parameters, ...", mark_of(raw) or top)
        errors.raise_if_any()
    check_finite(errors, raw, "", top)
    errors.raise_if_any()  # a phase of its own: the schema checks below would report these again
    for key in raw:
        if key not in TOP_KEYS:
            errors.add("E110", f"unknown recipe key {key!r}", key_mark_of(raw, key), str(key), did_you_mean(str(key), TOP_KEYS))
    registry = get_registry()
    method_name = raw.get("merge_method")
    method = registry.merge_method(method_name) if isinstance(method_name, str) else None
    if "merge_method" not in raw:
        errors.add(
            "E111", "the recipe needs 'merge_method'", top, "merge_method", f"one of: {', '.join(sorted(registry.merge_methods))}"
        )
    elif method is None:
        errors.add(
            "E112",
            f"unknown merge method {method_name!r}",
            mark_of(raw, "merge_method"),
            "merge_method",
            did_you_mean(str(method_name), registry.merge_methods) + " (`ssmgraph merge --methods` lists them)",
        )
    models = _parse_models(errors, raw, base_dir, top)
    names = [m.name for m in models]
    base = raw.get("base_model")
    if base is not None and base not in names:
        errors.add(
            "E210",
            f"base_model {base!r} is not one of the models",
            mark_of(raw, "base_model"),
            "base_model",
            did_you_mean(str(base), names),
        )
    parameters = (
        check_mapping(
            errors,
            raw.get("parameters"),
            method.params,
            "parameters",
            f"merge method {method.name!r}",
            mark_of(raw, "parameters"),
        )
        if method
        else {}
    )
    permute = raw.get("permute", False)
    if isinstance(permute, bool):
        permute_values = {p.name: p.default for p in PERMUTE} if permute else None
    else:
        permute_values = check_mapping(errors, permute, PERMUTE, "permute", "permute", mark_of(raw, "permute"))
    data = _parse_data(errors, raw, registry, base_dir)
    if permute_values is not None and permute_values.get("match") == "activations" and data is None:
        errors.add(
            "E111",
            "permute: `match: activations` reads the models' activations on data; the recipe has no 'data'",
            mark_of(raw, "permute") or top,
            "permute",
            "add a data section, e.g. data: {task: digits}, or use match: weights",
        )
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        errors.add("E112", f"seed: expected an integer, got {seed!r}", mark_of(raw, "seed"), "seed")
    if method is not None and len(models) == len(raw.get("models") or []):  # count only well-formed lists
        _check_method_fit(errors, method, models, data, raw, top)
    errors.raise_if_any()
    assert method is not None
    return Recipe(method, tuple(models), parameters, base, permute_values, data, int(seed), source, base_dir)


def _parse_data(errors: Collector, raw: Mapping[str, Any], registry: Registry, base_dir: Path) -> DataSpec | None:
    """The data section, its task and the task's options checked here, where they can be located."""
    section = raw.get("data")
    if section is None:
        return None
    values = check_mapping(errors, section, DATA, "data", "data", mark_of(raw, "data"))
    if "task" not in values:
        return None
    spec = registry.task(values["task"])
    if spec is None:
        help_ = did_you_mean(values["task"], registry.tasks) + " (`ssmgraph tasks` lists them)"
        errors.add("E112", f"unknown task {values['task']!r}", mark_of(section, "task"), "data.task", help_)
    else:
        where = mark_of(section, "options") if "options" in section else key_mark_of(section, "task")
        check_mapping(errors, values["options"], spec.params, "data.options", f"task {spec.name!r}", where)
        values["options"] = absolute_paths(values["task"], values["options"], base_dir)  # from the recipe's folder
    return DataSpec(values["task"], dict(values["options"]), values["batch_size"], values["eval_batches"], mark_of(raw, "data"))


def _parse_models(errors: Collector, raw: Mapping[str, Any], base_dir: Path, top: Mark) -> list[ModelSource]:
    items = raw.get("models")
    if items is None:
        errors.add("E111", "the recipe needs 'models': a list of {name, checkpoint} or {name, blueprint}", top, "models")
        return []
    if not isinstance(items, list):
        errors.add("E112", "models must be a list", mark_of(raw, "models"), "models")
        return []
    models: list[ModelSource] = []
    for i, item in enumerate(items):
        path = f"models[{i}]"
        if not isinstance(item, dict):
            errors.add(
                "E112", f"{path} must be a mapping such as {{name: a, checkpoint: runs/a}}", mark_of(item) or mark_of(items), path
            )
            continue
        for key in item:
            if key not in MODEL_KEYS:
                errors.add(
                    "E110",
                    f"unknown key {key!r} in a model entry",
                    key_mark_of(item, key),
                    f"{path}.{key}",
                    did_you_mean(str(key), MODEL_KEYS),
                )
        name = item.get("name")
        if not isinstance(name, str) or not name.isidentifier():
            errors.add(
                "E111" if name is None else "E200",
                f"{path} needs a 'name' (letters, digits, _)",
                mark_of(item, "name") if name is not None else mark_of(item),
                f"{path}.name",
            )
            continue
        if name in [m.name for m in models]:
            errors.add("E200", f"model name {name!r} is used twice", mark_of(item, "name"), f"{path}.name")
        check_folder_name(errors, name, [m.name for m in models], mark_of(item, "name"), f"{path}.name")
        if not submodule_name_ok(name):
            # merges name nodes and taps after their models (<name>.h); these would shadow module members
            errors.add(
                "E200",
                f"model name {name!r} is a Python keyword or a torch module member",
                mark_of(item, "name"),
                f"{path}.name",
                f"rename it, e.g. {name.strip('_')}_model",
            )
        has_ckpt, has_bp = "checkpoint" in item, "blueprint" in item
        if has_ckpt == has_bp:
            errors.add(
                "E111",
                f"model {name!r} needs exactly one of 'checkpoint' (a saved model) or 'blueprint' (a fresh one)",
                mark_of(item),
                path,
            )
            continue
        checkpoint = None
        if has_ckpt:
            value = item["checkpoint"]
            if not isinstance(value, str):
                errors.add("E112", f"{path}.checkpoint must be a path", mark_of(item, "checkpoint"), f"{path}.checkpoint")
                continue
            checkpoint = (base_dir / value) if not Path(value).is_absolute() else Path(value)
            if not checkpoint.exists():
                errors.add(
                    "E210",
                    f"model {name!r}: {value} does not exist",
                    mark_of(item, "checkpoint"),
                    f"{path}.checkpoint",
                    "paths are relative to the recipe file",
                )
        blueprint = item.get("blueprint")
        if has_bp and not isinstance(blueprint, str):
            errors.add(
                "E112", f"{path}.blueprint must be a blueprint name or path", mark_of(item, "blueprint"), f"{path}.blueprint"
            )
            continue
        overrides = item.get("set", {})
        if not isinstance(overrides, dict):
            errors.add("E112", f"{path}.set must be a mapping of blueprint params", mark_of(item, "set"), f"{path}.set")
            overrides = {}
        params = check_mapping(
            errors, item.get("parameters"), PER_MODEL, f"{path}.parameters", "a model entry", mark_of(item, "parameters")
        )
        if has_bp and not Path(blueprint).is_absolute() and (base_dir / blueprint).exists():
            blueprint = str(
                (base_dir / blueprint).resolve()
            )  # a file next to the recipe; absolute, as merge.yaml re-runs anywhere
        models.append(ModelSource(name, checkpoint, blueprint if has_bp else None, dict(overrides), params, mark_of(item)))
    return models


def _check_method_fit(
    errors: Collector, method: MergeMethodSpec, models: list[ModelSource], data: DataSpec | None, raw: Any, top: Mark
) -> None:
    count = len(models)
    if count < method.min_models or (method.max_models is not None and count > method.max_models):
        if method.max_models is None:
            want = f"at least {method.min_models}"
        elif method.max_models == method.min_models:
            want = str(method.min_models)
        else:
            want = f"{method.min_models} to {method.max_models}"
        errors.add(
            "E112",
            f"merge method {method.name!r} takes {want} models, the recipe lists {count}",
            mark_of(raw, "models") or top,
            "models",
        )
    if method.data and data is None:
        errors.add(
            "E111",
            f"merge method {method.name!r} needs 'data' (a task to probe, train or evaluate on)",
            top,
            "data",
            "e.g. data: {task: digits}",
        )


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    return parse_recipe(load_file(path, str(path)), str(path), path.parent)


def recipe_from_text(text: str, name: str = "recipe.yaml", base_dir: Path = Path(".")) -> Recipe:
    return parse_recipe(load_yaml(text, name), name, base_dir)
