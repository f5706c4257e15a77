"""Reading and writing Hugging Face checkpoint directories without transformers.

A checkpoint directory (what ``save_pretrained`` writes) holds ``config.json`` and the
weights: ``model.safetensors``, shards listed in ``model.safetensors.index.json``, or the
older ``pytorch_model.bin`` (and its index). A ``.bin`` file is a pickle, which can run code
when loaded: it is read only with ``torch.load(weights_only=True)``, which refuses anything
but tensors and plain containers.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

import torch
from safetensors.torch import load_file

from ssmgraph.folders import holds_current_folder, under_a_file
from ssmgraph.interop.errors import HFConfigError, HFFileError
from ssmgraph.safeio import check_fields, check_items, describe, read_json
from ssmgraph.serialization import replacing, write_safetensors

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
BIN_FILE = "pytorch_model.bin"
WEIGHT_FILES = (SAFETENSORS_FILE, f"{SAFETENSORS_FILE}.index.json", BIN_FILE, f"{BIN_FILE}.index.json")

_REFETCH = "download the checkpoint again, or write it with save_pretrained"
_JSON_TYPES = {int: "integer", float: "number", bool: "boolean (true or false)", str: "string", dict: "object"}


class HFConfig:
    """config.json's fields, read with errors that name the file and the field.

    ``default`` is the value the family's transformers config class assumes when the field
    is absent (hand-written or older configs omit fields)."""

    def __init__(self, data: Mapping[str, Any], path: Path):
        self.data, self.path = dict(data), path

    def fail(self, field: str, problem: str, help: str = "") -> HFConfigError:
        return HFConfigError(f"{self.path}: field {field!r}: {problem}", help)

    def value(self, field: str, kind: type, default: Any, *, minimum: float | None = None) -> Any:
        """The field's value (``default`` when absent), checked to be a ``kind`` (int, float, bool,
        str, dict) of at least ``minimum``; null is accepted where the default is null."""
        if field not in self.data:
            return default
        value = self.data[field]
        if value is None and default is None:
            return None
        fits = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, fits = float(value), True
        if not fits:
            raise self.fail(field, f"expected {kind.__name__}, got {value!r}", f"write {field} as a JSON {_JSON_TYPES[kind]}")
        if minimum is not None and value < minimum:
            raise self.fail(
                field, f"must be at least {minimum:g}, got {value!r}", "no working model has this value: is config.json damaged?"
            )
        return value

    def expect(self, field: str, wanted: Any, default: Any, why: str) -> None:
        """Refuse a field whose value ssmgraph cannot reproduce (``wanted`` is the one it can)."""
        value = self.value(field, type(wanted), default)
        if value != wanted:
            raise self.fail(field, f"{value!r} is not supported: {why}", f"only {field}={json.dumps(wanted)} converts")

    def choice(self, field: str, options: Mapping[str, Any], default: str) -> Any:
        """Map a string field through ``options`` (HF name -> ssmgraph value)."""
        value = self.value(field, str, default)
        if value not in options:
            raise self.fail(field, f"{value!r} has no ssmgraph equivalent", f"supported: {', '.join(options)}")
        return options[value]


def read_config(directory: Path) -> HFConfig:
    """config.json of a checkpoint directory."""
    if not directory.is_dir():
        raise HFFileError(f"{directory}: no such directory", "give the folder that model.save_pretrained(...) wrote")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise HFFileError(
            f"{path}: missing; a Hugging Face checkpoint directory holds {CONFIG_FILE} and its weights",
            "save one with model.save_pretrained(DIR), or download the model's config.json next to its weights",
        )
    # tag_constants: transformers 4 writes Mamba-2's time_step_limit as a bare Infinity
    data = read_json(path, what="cannot read the model's config", error=HFFileError, fix=_REFETCH, tag_constants=True)
    if not isinstance(data, dict):
        raise HFFileError(f"{path}: expected a JSON object, got {describe(data)}", _REFETCH)
    return HFConfig(data, path)


@dataclass
class HFWeights:
    """The tensors of a checkpoint, and the file each came from (for error messages)."""

    directory: Path
    tensors: dict[str, torch.Tensor]
    origin: dict[str, Path]

    def files(self) -> str:
        """The weights file, or the directory of the shards (for messages about a tensor in none of them)."""
        files = {str(p) for p in self.origin.values()}
        return files.pop() if len(files) == 1 else f"{self.directory} ({len(files)} weight files)"


def read_weights(directory: Path) -> HFWeights:
    """All tensors of the checkpoint: safetensors preferred, a ``.bin`` through a weights-only load."""
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        files = read_shard_index(path)[0] if name.endswith(".index.json") else [path]
        weights = HFWeights(directory, {}, {})
        for file in files:
            for key, tensor in _read_file(file).items():
                weights.tensors[key], weights.origin[key] = tensor, file
        return weights
    raise HFFileError(
        f"{directory}: no weights (looked for {', '.join(WEIGHT_FILES)})",
        "save the model with save_pretrained, or download its weights next to config.json",
    )


def read_shard_index(index: Path) -> tuple[list[Path], dict[str, str]]:
    """The shard files an index names (sorted by name, each inside the index's folder and present),
    and its ``weight_map`` (tensor name -> shard name)."""
    data = read_json(index, what="cannot read the weights index", error=HFFileError, fix=_REFETCH)
    check_fields(data, {"weight_map": dict}, source=index, error=HFFileError, fix=_REFETCH)
    weight_map: dict[str, str] = data["weight_map"]
    check_items(weight_map, str, source=index, error=HFFileError, where="weight_map", fix=_REFETCH)
    names = sorted(set(weight_map.values()))
    for name in names:
        _check_inside(index, name)
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise HFFileError(
            f"{index}: lists shards that are not there: {', '.join(missing)}", "download every shard the index names"
        )
    return [index.parent / n for n in names], weight_map


def _check_inside(index: Path, name: str) -> None:
    """Refuse a shard name that is absolute or climbs out of the index's folder (``..``, or a
    symlinked folder on the way). The shard file itself may be a symlink, as in the HF cache."""
    parts = PureWindowsPath(name)  # reads both / and \ as separators, and drive letters
    if not name or "\x00" in name or parts.anchor or ".." in parts.parts or not _folder_holds(index.parent, name):
        raise HFFileError(
            f"{index}: weight_map entry {name!r} is not a file inside {index.parent}",
            "shard names are file names next to the index (model-00001-of-00002.safetensors): "
            "the index may have been tampered with; download the checkpoint again",
        )


def _folder_holds(folder: Path, name: str) -> bool:
    """Whether the folder that ``name`` lies in is ``folder`` or below it, symlinks resolved."""
    try:
        root, parent = folder.resolve(), (folder / name).parent.resolve()
    except (OSError, RuntimeError):  # a symlink loop on the way
        return False
    return parent == root or root in parent.parents


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
            raise HFFileError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle refuses non-tensor objects with UnpicklingError, corrupt files with others
        raise _refused(path, exc) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise HFFileError(f"{path}: not a state dict (a mapping from names to tensors)")
    return state


def _refused(path: Path, exc: Exception) -> HFFileError:
    """The weights-only loader's refusal, without torch's advice to load the file unrestricted:
    for an untrusted file that would run whatever code its pickle holds."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if isinstance(exc, pickle.UnpicklingError):
        held = f" (it names {found.group(1)})" if found else ""
        problem = f"the file holds pickled objects other than tensors{held}, or is damaged"
    else:
        problem = f"damaged or not a PyTorch weights file ({type(exc).__name__})"
    return HFFileError(
        f"{path}: refused by the weights-only loader: {problem}",
        "convert it to safetensors with the tool that made it (transformers: model.save_pretrained(DIR) writes "
        "model.safetensors), or download the model's safetensors weights",
    )


def replacing_output(
    out: Path, overwrite: bool, *, source: Path, earlier: Callable[[Path], bool]
) -> AbstractContextManager[Path]:
    """:func:`ssmgraph.serialization.replacing` for a conversion's ``--out``: never the source (or a
    folder holding it), the current folder, a file or a folder of other files; a non-empty folder
    that ``earlier`` recognises as a previous output of the same conversion only with ``overwrite``."""
    return replacing(
        out,
        overwrite,
        replaceable=lambda folder: _check_output(folder, source, earlier),
        exists=lambda folder: HFFileError(
            f"{folder}: already exists", "pass --overwrite to replace it, or give --out another directory"
        ),
        empty_is_new=True,
    )


def _check_output(out: Path, source: Path, earlier: Callable[[Path], bool]) -> None:
    target, held = out.resolve(), source.resolve()
    if target == held or target in held.parents:
        raise HFFileError(
            f"{out}: the output would replace the model being converted (or the folder holding it)",
            "give --out another directory",
        )
    if holds_current_folder(out):
        raise HFFileError(f"{out}: is the current folder (or holds it)", "give --out a new directory")
    if under_a_file(out):
        raise HFFileError(f"{out}: lies under a file, not a directory", "give --out a directory path")
    if out.exists() and not out.is_dir():
        raise HFFileError(f"{out}: exists and is not a directory", "give --out a directory path")
    if out.is_dir() and any(out.iterdir()) and not earlier(out):
        raise HFFileError(
            f"{out}: holds other files, not an earlier conversion; --overwrite replaces only that",
            "give --out a new or empty directory",
        )


def write_checkpoint(folder: Path, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
    """config.json and model.safetensors, as ``save_pretrained`` writes them (format metadata "pt")."""
    (folder / CONFIG_FILE).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_safetensors(
        {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in tensors.items()},
        folder / SAFETENSORS_FILE,
        {"format": "pt"},
    )
