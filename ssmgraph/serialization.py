"""Saving and loading compiled models: resolved blueprint + safetensors, written atomically.

A model directory holds ``blueprint.yaml`` (the resolved blueprint: no expressions, fragments
inlined), ``model.safetensors`` (a tied tensor stored once, under its owner's name) and
``meta.json`` (versions, the plugins whose blocks it uses, tied names). It is written into a
temporary sibling directory and moved into place with ``os.replace``, so a crash mid-save
leaves the previous model (or nothing), never a half-written one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ssmgraph.blueprint import load_blueprint
from ssmgraph.blueprint.yamlsafe import dump_yaml
from ssmgraph.errors import SsmgraphError
from ssmgraph.folders import (
    CHECKPOINTS,
    CheckpointError,
    atomic_directory,
    folder_lock,
    follow_link,
    latest_checkpoint,
    readable_by_others,
    refuse_checkpoint_target,
    refuse_sources,
)
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.graph.model import CompiledModel
from ssmgraph.registry.plugins import get_registry
from ssmgraph.safeio import check_fields, check_items, read_json
from ssmgraph.version import __version__

BLUEPRINT_FILE = "blueprint.yaml"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
FORMAT = "ssmgraph-model/1"
LORA_A, LORA_B, LORA_SCALING = "lora_A", "lora_B", "lora_scaling"
"""Suffixes of a LoRA adapter in a checkpoint's weights (ssmgraph.train.lora): ``PATH.lora_A`` [r, in],
``PATH.lora_B`` [out, r] and the scalar ``PATH.lora_scaling`` of the linear layer ``PATH``."""


def is_saved_model(directory: Path) -> bool:
    """Whether ``directory`` holds a saved model (what :func:`save` writes)."""
    return directory.is_dir() and any((directory / name).is_file() for name in (META_FILE, WEIGHTS_FILE, BLUEPRINT_FILE))


def check_replaceable(directory: Path, sources: Iterable[Path] = ()) -> None:
    """Refuse to save over anything but nothing, an empty directory or a saved model — and never
    over a training run's checkpoint or a folder in ``sources`` (the folders actually read)."""
    refuse_checkpoint_target(directory)
    refuse_sources(directory, sources)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(
            f"{directory} is a file, not a model directory; save the model to another path (e.g. {directory}-model)"
        )
    if directory.is_dir() and any(directory.iterdir()) and not is_saved_model(directory):
        raise CheckpointError(
            f"{directory} is a directory that holds other files, not a saved model; saving would delete them. "
            f"Choose a new or empty directory (e.g. {directory / 'model'})"
        )


def already_exists(out: Path) -> SsmgraphError:
    return SsmgraphError(f"{out} already exists; pass --overwrite to replace it")


@contextmanager
def replacing(
    out: Path,
    overwrite: bool,
    *,
    replaceable: Callable[[Path], None] = check_replaceable,
    exists: Callable[[Path], SsmgraphError] = already_exists,
    reads: Iterable[Path] = (),
    what: str = "the output",
    empty_is_new: bool = False,
) -> Iterator[Path]:
    """Hold the lock of the output folder ``out`` (written where a symlink points: the path yielded)
    for the block, once the rules of the commands that replace a folder (``merge``, ``import hf``,
    ``export hf``) allow it: never a training run's checkpoint nor a folder the command ``reads``;
    under the lock, ``replaceable`` raises the command's own refusals (a file, a folder of other
    files than its earlier output: before --overwrite is asked for, which would not help there);
    then a folder that is there already is replaced only with ``overwrite`` (else ``exists``;
    ``empty_is_new``: an empty folder needs no --overwrite). The block writes ``out`` with
    :func:`ssmgraph.folders.atomic_directory`."""
    out = follow_link(Path(out))
    refuse_checkpoint_target(out, what)
    refuse_sources(out, reads, what)
    with folder_lock(out):
        replaceable(out)
        if out.exists() and not overwrite and not (empty_is_new and out.is_dir() and not any(out.iterdir())):
            raise exists(out)
        yield out


def weights_to_save(model: torch.nn.Module, tied: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """The state dict without tied aliases, as contiguous CPU tensors."""
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in tied}


def save(model: CompiledModel, directory: str | Path, *, extra_meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` to ``directory`` atomically, replacing a model saved there before.

    Anything else already at ``directory`` (a file, a directory of other files) is left alone:
    :class:`CheckpointError`."""
    directory = Path(directory)
    with folder_lock(directory):
        check_replaceable(directory)
        write_model(model, directory, extra_meta)
    return directory


def write_model(model: CompiledModel, directory: Path, extra_meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (tied aliases stored once) to ``directory`` atomically: a kill leaves the model
    saved there before. No lock or checks: :func:`save` adds them; a trainer writing into the run it
    holds (``RUN/best/``, ``RUN/ema/``) needs neither."""
    with atomic_directory(directory) as tmp:
        write_model_files(model, tmp, weights_to_save(model, model.tied), extra_meta)
    return directory


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str] | None = None) -> None:
    """A safetensors file with the permissions of its JSON neighbours (the library writes 0600)."""
    save_file(dict(tensors), str(path), metadata=dict(metadata) if metadata else None)
    readable_by_others(path)


def write_model_files(
    model: CompiledModel, folder: Path, weights: Mapping[str, torch.Tensor], extra_meta: Mapping[str, Any] | None = None
) -> None:
    """The three files of a saved model, into an (already temporary) folder."""
    write_safetensors(weights, folder / WEIGHTS_FILE, {"format": FORMAT})
    write_model_description(model, folder, extra_meta)


def write_model_description(model: CompiledModel, folder: Path, extra_meta: Mapping[str, Any] | None = None) -> None:
    """blueprint.yaml and meta.json of a saved model (its weights written apart: a streamed merge writes them itself)."""
    meta = {
        "format": FORMAT,
        "ssmgraph": __version__,
        "torch": torch.__version__,
        "name": model.blueprint.name,
        "model": model.view,
        "tied": dict(model.tied),
        "blocks": {info.block: info.plugin for info in model.nodes.values()},
        "plugins": _plugin_versions(model),
        **dict(extra_meta or {}),
    }
    (folder / BLUEPRINT_FILE).write_text(dump_yaml(model.blueprint.to_dict()), encoding="utf-8")
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")


def model_directory(directory: Path) -> Path:
    """A saved model's directory; for a training run, its latest checkpoint."""
    if (directory / META_FILE).is_file() or not (directory / CHECKPOINTS).is_dir():
        return directory
    latest = latest_checkpoint(directory)
    if latest is None:
        raise CheckpointError(f"{directory}: a training run without any checkpoint yet")
    return latest


def read_meta(directory: Path) -> dict[str, Any]:
    """meta.json of a saved model, its format and the fields :func:`load` uses checked."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such model directory")
    missing = [f for f in (BLUEPRINT_FILE, WEIGHTS_FILE, META_FILE) if not (directory / f).is_file()]
    if missing:
        raise CheckpointError(
            f"{directory}: not a saved ssmgraph model (missing {', '.join(missing)}); save one with ssmgraph.save(model, dir)"
        )
    path, fix = directory / META_FILE, "the model directory is damaged: save the model again with ssmgraph.save(model, dir)"
    meta = read_json(path, what="unreadable", error=CheckpointError, fix=fix)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: unsupported format {meta.get('format') if isinstance(meta, dict) else meta!r} (expected {FORMAT})"
        )
    fields = {"model": (str, type(None)), "tied": dict, "blocks": dict, "plugins": dict}
    check_fields(meta, fields, source=path, error=CheckpointError, optional=fields.keys(), fix=fix)
    for key in ("tied", "blocks", "plugins"):
        check_items(meta.get(key, {}), str, source=path, error=CheckpointError, where=key, fix=fix)
    return meta


def load(directory: str | Path, *, map_location: str | torch.device = "cpu", merge_lora: bool = True) -> CompiledModel:
    """Rebuild a model saved with :func:`save`, with identical outputs.

    LoRA adapters a fine-tuning run stored are merged into their layers' weights (without
    ``merge_lora``: left out, giving the frozen base model)."""
    directory = model_directory(Path(directory))
    meta = read_meta(directory)
    _check_plugins(meta, directory)
    blueprint = load_blueprint(directory / BLUEPRINT_FILE)
    model = compile_blueprint(blueprint, model=meta.get("model"))
    try:
        state = load_file(str(directory / WEIGHTS_FILE), device=str(map_location))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: cannot read weights ({type(exc).__name__}: {exc})") from None
    state = merge_adapters(state, directory) if merge_lora else without_adapters(state)
    for alias, owner in meta.get("tied", {}).items():
        if owner in state:
            state[alias] = state[owner]
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not fit the blueprint
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:4])
        raise CheckpointError(f"{directory}: weights do not match the blueprint ({detail})") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{directory}: weights do not match the blueprint "
            f"(missing {_few(result.missing_keys)}; unexpected {_few(result.unexpected_keys)})"
        )
    return model.to(map_location)


def without_adapters(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in (LORA_A, LORA_B, LORA_SCALING)}


def merge_adapters(state: dict[str, torch.Tensor], directory: Path) -> dict[str, torch.Tensor]:
    """The weights with each LoRA adapter merged into its layer: W + scaling * (B @ A), in fp32."""
    merged = without_adapters(state)
    for key, a in state.items():
        path, part = key.rsplit(".", 1) if "." in key else ("", key)
        if part != LORA_A:
            continue
        names = {n: f"{path}.{n}" for n in ("weight", LORA_B, LORA_SCALING)}
        if any(name not in state for name in names.values()):
            raise CheckpointError(
                f"{directory / WEIGHTS_FILE}: adapter {key} without {', '.join(n for n in names.values() if n not in state)}"
            )
        weight, b = state[names["weight"]], state[names[LORA_B]]
        if a.dim() != 2 or b.dim() != 2 or (b.shape[0], a.shape[1]) != tuple(weight.shape) or a.shape[0] != b.shape[1]:
            raise CheckpointError(
                f"{directory / WEIGHTS_FILE}: adapter {path} ({list(b.shape)} x {list(a.shape)}) does not fit its weight {list(weight.shape)}"
            )
        delta = float(state[names[LORA_SCALING]]) * (b.float() @ a.float())
        merged[names["weight"]] = (weight.float() + delta).to(weight.dtype)
    return merged


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "") if keys else "none"


_PACKAGE_NAME = re.compile(r"[A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9]", re.IGNORECASE)
"""A valid distribution name (PEP 508): the only names from meta.json that go into a ``pip install`` hint."""


def _is_package_name(name: object) -> bool:
    return isinstance(name, str) and _PACKAGE_NAME.fullmatch(name) is not None


def _check_plugins(meta: Mapping[str, Any], directory: Path) -> None:
    """Refuse a model whose blocks no installed plugin provides, saying what to install.

    meta.json is data from wherever the model came from: a plugin name that is not a valid
    package name (``x && curl ... | sh``) is quoted, never put into the ``pip install`` line."""
    registry = get_registry()
    missing = {block: plugin for block, plugin in meta.get("blocks", {}).items() if registry.get(block) is None}
    if not missing:
        return
    versions = meta.get("plugins", {})
    needs = ", ".join(
        f"{block} (from {plugin if _is_package_name(plugin) else repr(plugin)} {versions.get(plugin, '')})".replace(" )", ")")
        for block, plugin in sorted(missing.items())
    )
    packages = sorted({plugin for plugin in missing.values() if _is_package_name(plugin)})
    unnamed = sorted(block for block, plugin in missing.items() if not _is_package_name(plugin))
    hint = f"; install them with: pip install {' '.join(packages)}" if packages else ""
    if unnamed:
        hint += f"; the package given for {', '.join(unnamed)} is not a valid package name (meta.json may be damaged or edited): find the plugin that provides it yourself"
    raise CheckpointError(f"{directory}: the model needs blocks that no installed plugin provides: {needs}{hint}")


def _plugin_versions(model: CompiledModel) -> dict[str, str]:
    records = {r.dist: r.version for r in get_registry().plugins.values()}
    return {info.plugin: records.get(info.plugin, "unknown") for info in model.nodes.values()}
