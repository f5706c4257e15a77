"""Saving and loading compiled models: resolved blueprint + safetensors, written atomically.

A model directory holds ``blueprint.yaml`` (the resolved blueprint: no expressions, fragments
inlined), ``model.safetensors`` (a tied tensor stored once, under its owner's name) and
``meta.json`` (versions, the plugins whose blocks it uses, tied names). It is written into a
temporary sibling directory and moved into place with ``os.replace``, so a crash mid-save
leaves the previous model (or nothing), never a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ssmgraph.blueprint import load_blueprint
from ssmgraph.blueprint.yamlsafe import dump_yaml
from ssmgraph.errors import SsmgraphError
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.graph.model import CompiledModel
from ssmgraph.registry.plugins import get_registry

BLUEPRINT_FILE = "blueprint.yaml"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
FORMAT = "ssmgraph-model/1"


class CheckpointError(SsmgraphError):
    """A model directory that cannot be loaded; the message says why and what to do."""

    code = "E400"


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``target`` when the block succeeds."""
    target = Path(target)
    if holds_current_folder(target):
        raise CheckpointError(f"{target} is the current folder (or holds it); write to a new folder")
    if under_a_file(target):
        raise CheckpointError(f"{target} lies under a file, not a directory; choose another path")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        for path in tmp.iterdir():
            _fsync(path)
        old = None
        if target.exists() or target.is_symlink():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            _remove(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def under_a_file(path: Path) -> bool:
    """Whether a folder above ``path`` is in fact a file (so nothing can be written there)."""
    return any(parent.exists() and not parent.is_dir() for parent in path.parents)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file so that a kill leaves the old content or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def holds_current_folder(path: Path) -> bool:
    """Whether replacing ``path`` would pull the working directory from under the process."""
    return path.resolve() == Path.cwd() or path.resolve() in Path.cwd().parents


def _remove(path: Path) -> None:
    """Delete a file or a directory tree (a file is not a tree: rmtree would leave it behind)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        os.remove(path)


def is_saved_model(directory: Path) -> bool:
    """Whether ``directory`` holds a saved model (what :func:`save` writes)."""
    return directory.is_dir() and any((directory / name).is_file() for name in (META_FILE, WEIGHTS_FILE, BLUEPRINT_FILE))


def check_replaceable(directory: Path) -> None:
    """Refuse to save over anything but nothing, an empty directory or a saved model."""
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory} is a file, not a model directory; save the model to another path (e.g. {directory}-model)")
    if directory.is_dir() and any(directory.iterdir()) and not is_saved_model(directory):
        raise CheckpointError(
            f"{directory} is a directory that holds other files, not a saved model; saving would delete them. "
            f"Choose a new or empty directory (e.g. {directory / 'model'})"
        )


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def weights_to_save(model: torch.nn.Module, tied: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """The state dict without tied aliases, as contiguous CPU tensors."""
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in tied}


def save(model: CompiledModel, directory: str | Path, *, extra_meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` to ``directory`` atomically, replacing a model saved there before.

    Anything else already at ``directory`` (a file, a directory of other files) is left alone:
    :class:`CheckpointError`."""
    directory = Path(directory)
    check_replaceable(directory)
    with atomic_directory(directory) as tmp:
        write_model_files(model, tmp, weights_to_save(model, model.tied), extra_meta)
    return directory


def write_model_files(model: CompiledModel, folder: Path, weights: Mapping[str, torch.Tensor], extra_meta: Mapping[str, Any] | None = None) -> None:
    """The three files of a saved model, into an (already temporary) folder."""
    meta = {
        "format": FORMAT,
        "ssmgraph": _ssmgraph_version(),
        "torch": torch.__version__,
        "name": model.blueprint.name,
        "model": model.view,
        "tied": dict(model.tied),
        "blocks": {info.block: info.plugin for info in model.nodes.values()},
        "plugins": _plugin_versions(model),
        **dict(extra_meta or {}),
    }
    (folder / BLUEPRINT_FILE).write_text(dump_yaml(model.blueprint.to_dict()), encoding="utf-8")
    save_file(dict(weights), str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")


def model_directory(directory: Path) -> Path:
    """A saved model's directory; for a training run, its latest checkpoint."""
    if (directory / META_FILE).is_file() or not (directory / "checkpoints").is_dir():
        return directory
    from ssmgraph.train.checkpoint import latest_checkpoint

    latest = latest_checkpoint(directory)
    if latest is None:
        raise CheckpointError(f"{directory}: a training run without any checkpoint yet")
    return latest


def read_meta(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such model directory")
    missing = [f for f in (BLUEPRINT_FILE, WEIGHTS_FILE, META_FILE) if not (directory / f).is_file()]
    if missing:
        raise CheckpointError(f"{directory}: not a saved ssmgraph model (missing {', '.join(missing)}); save one with ssmgraph.save(model, dir)")
    try:
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{directory / META_FILE}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{directory / META_FILE}: unsupported format {meta.get('format') if isinstance(meta, dict) else meta!r} (expected {FORMAT})")
    return meta


def load(directory: str | Path, *, map_location: str | torch.device = "cpu") -> CompiledModel:
    """Rebuild a model saved with :func:`save`, with identical outputs."""
    directory = model_directory(Path(directory))
    meta = read_meta(directory)
    _check_plugins(meta, directory)
    blueprint = load_blueprint(directory / BLUEPRINT_FILE)
    model = compile_blueprint(blueprint, model=meta.get("model"))
    try:
        state = load_file(str(directory / WEIGHTS_FILE), device=str(map_location))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: cannot read weights ({type(exc).__name__}: {exc})") from None
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


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "") if keys else "none"


def _check_plugins(meta: Mapping[str, Any], directory: Path) -> None:
    registry = get_registry()
    missing = {block: plugin for block, plugin in meta.get("blocks", {}).items() if registry.get(block) is None}
    if missing:
        needs = ", ".join(f"{block} (from {plugin} {meta.get('plugins', {}).get(plugin, '')})".replace(" )", ")") for block, plugin in sorted(missing.items()))
        packages = " ".join(sorted(set(missing.values())))
        raise CheckpointError(f"{directory}: the model needs blocks that no installed plugin provides: {needs}; install them with: pip install {packages}")


def _plugin_versions(model: CompiledModel) -> dict[str, str]:
    records = {r.dist: r.version for r in get_registry().plugins.values()}
    return {info.plugin: records.get(info.plugin, "unknown") for info in model.nodes.values()}


def _ssmgraph_version() -> str:
    from ssmgraph import __version__

    return __version__
