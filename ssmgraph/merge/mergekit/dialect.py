"""mergekit's YAML configuration, read as-is: ``models:`` (or ``slices:``), ``merge_method``,
``base_model``, ``parameters`` (globally, per model, per slice; gradients and filters),
``dtype``/``out_dtype``, ``tokenizer_source`` and ``chat_template``.

Every mistake is a located error (file:line:col and the key path), as in native recipes, before
any model is read. Model paths are folders, relative to the config file's folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssmgraph.blueprint.yamlsafe import load_file
from ssmgraph.errors import Collector, Mark, did_you_mean
from ssmgraph.merge.mergekit.methods import METHODS, MKMethod, is_setting
from ssmgraph.merge.recipe_checks import check_finite, key_mark_of, mark_of

TOP_KEYS = (
    "merge_method",
    "models",
    "slices",
    "base_model",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "modules",
    "name",
)
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float64": "float64",
}
UNSUPPORTED = {
    "modules": "multi-module (vision + text) configs are not supported; merge a single-module model with models: or slices:",
    "tokenizer": "the tokenizer: section (token surgery, embedding resizing) is not supported; use tokenizer_source: base or a model path",
}


def is_mergekit(raw: Any) -> bool:
    """Whether a loaded YAML mapping is in mergekit's dialect: ``slices:``, or ``models:`` entries with ``model:`` keys."""
    if not isinstance(raw, dict):
        return False
    if "slices" in raw or "modules" in raw:
        return True
    models = raw.get("models")
    return isinstance(models, list) and any(isinstance(m, dict) and "model" in m for m in models)


@dataclass(frozen=True)
class Source:
    """One input of a slice: a model folder, its layer range (None: all layers), its parameters."""

    model: Path
    layer_range: tuple[int, int] | None
    parameters: dict[str, Any]
    mark: Mark | None
    where: str


@dataclass(frozen=True)
class Slice:
    sources: tuple[Source, ...]
    parameters: dict[str, Any]
    base_model: Path | None
    mark: Mark | None


@dataclass(frozen=True)
class MergekitConfig:
    method: MKMethod
    slices: tuple[Slice, ...]
    from_models: bool
    """``models:`` (every layer of every model) rather than ``slices:``."""
    base_model: Path | None
    parameters: dict[str, Any]
    dtype: str | None
    out_dtype: str | None
    tokenizer_source: Path | None
    chat_template: str | None
    source: str
    directory: Path
    text: str
    marks: dict[str, Mark | None] = field(default_factory=dict)
    union: bool = False
    """``tokenizer_source: union``: one vocabulary from every model's (vocab.py)."""
    aligned: bool = False
    """A ``tokenizer_source`` is written (base, a folder, union): token-indexed tensors follow its tokenizer, as mergekit's."""

    def models(self) -> list[Path]:
        """Every model folder the config reads, each once, the base first when named."""
        found = [self.base_model] if self.base_model else []
        for s in self.slices:
            for src in s.sources:
                if src.model not in found:
                    found.append(src.model)
        return found


def load_mergekit(path: str | Path) -> MergekitConfig:
    path = Path(path)
    return parse_mergekit(load_file(path, str(path)), str(path), path.parent, path.read_text(encoding="utf-8"))


def plain(value: Any) -> Any:
    """A loaded YAML value without its marks."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def parse_mergekit(raw: Any, source: str, directory: Path, text: str = "") -> MergekitConfig:
    errors = Collector()
    top = Mark(source, 1, 1)
    check_finite(errors, raw, "", top)
    errors.raise_if_any()
    for key in raw:
        if key in UNSUPPORTED:
            errors.add("E112", f"{key}: {UNSUPPORTED[key]}", key_mark_of(raw, key), str(key))
        elif key not in TOP_KEYS:
            errors.add(
                "E110", f"unknown mergekit config key {key!r}", key_mark_of(raw, key), str(key), did_you_mean(str(key), TOP_KEYS)
            )
    name = raw.get("merge_method")
    method = METHODS.get(name) if isinstance(name, str) else None
    if "merge_method" not in raw:
        errors.add("E111", "the config needs 'merge_method'", top, "merge_method", f"one of: {', '.join(sorted(METHODS))}")
    elif method is None:
        errors.add(
            "E112",
            f"unknown merge method {name!r}",
            mark_of(raw, "merge_method"),
            "merge_method",
            did_you_mean(str(name), METHODS),
        )
    if ("models" in raw) == ("slices" in raw):
        errors.add("E111", "a mergekit config has exactly one of 'models' or 'slices'", top, "models")
    base = _model_path(errors, raw, "base_model", directory) if raw.get("base_model") is not None else None
    params = _params(errors, raw, "parameters", method)
    slices = _models(errors, raw, directory, method) if "models" in raw else _slices(errors, raw, directory, method)
    dtypes = {key: _dtype(errors, raw, key) for key in ("dtype", "out_dtype")}
    tokenizer = raw.get("tokenizer_source")
    tokenizer_path = None
    if tokenizer not in (None, "base", "union"):
        tokenizer_path = _model_path(errors, raw, "tokenizer_source", directory)
    template = raw.get("chat_template")
    if template is not None and (not isinstance(template, str) or (template != "auto" and "{" not in template)):
        errors.add(
            "E112",
            f"chat_template {template!r}: give a Jinja template (a string with {{% ... %}}) or 'auto' (the tokenizer source's)",
            mark_of(raw, "chat_template"),
            "chat_template",
            "named templates (chatml, llama3, ...) are mergekit's files: paste the template itself",
        )
    if method is not None and slices:
        _check_method_fit(errors, method, slices, base, raw, top)
    errors.raise_if_any()
    assert method is not None
    return MergekitConfig(
        method, tuple(slices), "models" in raw, base, params, dtypes["dtype"], dtypes["out_dtype"], tokenizer_path,
        None if template in (None, "auto") else template, source, directory, text,
        {"merge_method": mark_of(raw, "merge_method") or top, "top": top, "tokenizer_source": mark_of(raw, "tokenizer_source")},
        union=tokenizer == "union",
        aligned=tokenizer is not None,
    )  # fmt: skip


def _dtype(errors: Collector, raw: Any, key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if value not in DTYPES:
        errors.add("E112", f"{key}: unknown dtype {value!r}", mark_of(raw, key), key, did_you_mean(str(value), DTYPES))
        return None
    return DTYPES[value]


def _model_path(errors: Collector, node: Any, key: str, directory: Path, where: str = "") -> Path | None:
    value, path = node.get(key), f"{where}{key}"
    if not isinstance(value, str) or not value:
        errors.add("E112", f"{path} must be a model folder (a path)", mark_of(node, key), path)
        return None
    if "+" in value:
        errors.add(
            "E112",
            f"{path}: LoRA adapters (model+lora) are not supported",
            mark_of(node, key),
            path,
            "merge the adapter into the model first",
        )
        return None
    folder = Path(value) if Path(value).is_absolute() else directory / value
    if not folder.is_dir():
        errors.add(
            "E210",
            f"{path}: {value} is not a folder",
            mark_of(node, key),
            path,
            "model paths are folders relative to the config file; ssmgraph downloads nothing (huggingface-cli download NAME --local-dir DIR)",
        )
        return None
    return folder


def _params(errors: Collector, node: Any, key: str, method: MKMethod | None, where: str = "") -> dict[str, Any]:
    raw, path = node.get(key), f"{where}{key}"
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.add("E112", f"{path} must be a mapping of parameters", mark_of(node, key), path)
        return {}
    for name, value in raw.items():
        if method is not None and method.param(str(name)) is None:
            names = [p.name for p in method.params]
            help_ = did_you_mean(str(name), names) if names else f"{method.name} takes no parameters"
            errors.add(
                "E110", f"merge method {method.name!r} has no parameter {name!r}", key_mark_of(raw, name), f"{path}.{name}", help_
            )
        elif not is_setting(value):
            errors.add(
                "E112",
                f"{path}.{name}: expected a value, a list of values (a gradient over the layers) or a list of {{filter, value}}",
                mark_of(raw, name),
                f"{path}.{name}",
            )
    return plain(raw)


def _entry(errors: Collector, item: Any, path: str, keys: tuple[str, ...], mark: Mark | None) -> bool:
    if not isinstance(item, dict):
        errors.add("E112", f"{path} must be a mapping", mark_of(item) or mark, path)
        return False
    for key in item:
        if key not in keys:
            errors.add(
                "E110", f"unknown key {key!r} in {path}", key_mark_of(item, key), f"{path}.{key}", did_you_mean(str(key), keys)
            )
    return True


def _models(errors: Collector, raw: Any, directory: Path, method: MKMethod | None) -> list[Slice]:
    items = raw.get("models")
    if not isinstance(items, list) or not items:
        errors.add(
            "E112", "models must be a non-empty list of {model: PATH, parameters: {...}}", mark_of(raw, "models"), "models"
        )
        return []
    sources = []
    for i, item in enumerate(items):
        path = f"models[{i}]"
        if not _entry(errors, item, path, ("model", "parameters"), mark_of(items)):
            continue
        if "model" not in item:
            errors.add("E111", f"{path} needs 'model' (a model folder)", mark_of(item), path)
            continue
        folder = _model_path(errors, item, "model", directory, f"{path}.")
        params = _params(errors, item, "parameters", method, f"{path}.")
        if folder is not None:
            sources.append(Source(folder, None, params, mark_of(item), path))
    return [Slice(tuple(sources), {}, None, mark_of(raw, "models"))]


def _slices(errors: Collector, raw: Any, directory: Path, method: MKMethod | None) -> list[Slice]:
    items = raw.get("slices")
    if not isinstance(items, list) or not items:
        errors.add("E112", "slices must be a non-empty list of {sources: [...]}", mark_of(raw, "slices"), "slices")
        return []
    slices = []
    for i, item in enumerate(items):
        path = f"slices[{i}]"
        if not _entry(errors, item, path, ("sources", "parameters", "base_model", "residual_weight"), mark_of(items)):
            continue
        if "residual_weight" in item:
            errors.add(
                "E112",
                f"{path}.residual_weight is not supported",
                key_mark_of(item, "residual_weight"),
                f"{path}.residual_weight",
            )
        base = _model_path(errors, item, "base_model", directory, f"{path}.") if item.get("base_model") is not None else None
        sources = []
        listed = item.get("sources")
        if not isinstance(listed, list) or not listed:
            errors.add("E111", f"{path} needs 'sources': a list of {{model, layer_range}}", mark_of(item), f"{path}.sources")
            continue
        for j, src in enumerate(listed):
            where = f"{path}.sources[{j}]"
            if not _entry(errors, src, where, ("model", "layer_range", "parameters"), mark_of(listed)):
                continue
            folder = _model_path(errors, src, "model", directory, f"{where}.") if "model" in src else None
            if "model" not in src:
                errors.add("E111", f"{where} needs 'model'", mark_of(src), where)
            span = src.get("layer_range")
            ok = isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in span)
            if not ok or span[0] < 0 or span[1] <= span[0]:
                errors.add(
                    "E112",
                    f"{where}.layer_range must be [start, end] with 0 <= start < end, got {plain(span)!r}",
                    mark_of(src, "layer_range") or mark_of(src),
                    f"{where}.layer_range",
                )
                continue
            params = _params(errors, src, "parameters", method, f"{where}.")
            if folder is not None:
                sources.append(Source(folder, (span[0], span[1]), params, mark_of(src, "layer_range"), where))
        lengths = {s.layer_range[1] - s.layer_range[0] for s in sources if s.layer_range}
        if len(lengths) > 1:
            errors.add(
                "E112",
                f"{path}: every source of a slice spans as many layers, got {sorted(lengths)}",
                mark_of(item, "sources"),
                f"{path}.sources",
            )
        slices.append(Slice(tuple(sources), _params(errors, item, "parameters", method, f"{path}."), base, mark_of(item)))
    return slices


def _check_method_fit(errors: Collector, method: MKMethod, slices: list[Slice], base: Path | None, raw: Any, top: Mark) -> None:
    for i, s in enumerate(slices):
        slice_base = s.base_model or base
        if method.base == "required" and slice_base is None:
            errors.add("E111", f"merge method {method.name!r} needs a base_model", top, "base_model")
            return
        folders = {src.model.resolve() for src in s.sources} | ({slice_base.resolve()} if slice_base else set())
        others = len(folders) - (1 if slice_base is not None and method.base != "none" else 0)
        where = "models" if "models" in raw else f"slices[{i}].sources"
        mark = mark_of(raw, "models") if "models" in raw else s.mark
        if method.count is not None and others != method.count:
            errors.add(
                "E112",
                f"merge method {method.name!r} merges exactly {method.count} model(s) besides the base, got {others}",
                mark,
                where,
            )
        elif others < method.minimum and method.name != "passthrough":
            errors.add(
                "E112",
                f"merge method {method.name!r} needs at least {method.minimum} model(s) besides the base, got {others}",
                mark,
                where,
            )
        if method.name == "passthrough" and len(s.sources) != 1:
            errors.add("E112", f"passthrough takes one source per slice, got {len(s.sources)}", mark, where)
