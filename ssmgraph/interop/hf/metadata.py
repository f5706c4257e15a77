"""What a Hugging Face checkpoint holds besides weights, carried through import, merge and export.

Import keeps config.json under meta.json's ``hf.config`` and copies the tokenizer and
generation files it finds (:data:`CARRIED_FILES`) into the model folder's ``hf/`` subfolder,
listing them under ``hf.files``; a merge (native recipes) gives its output the base model's
``hf`` entry and files when the merged model has the base's blueprint; export writes the
files next to config.json. Only these fixed file names are ever read or written, as plain
files inside the folder (meta.json is data: a name it lists that is not one of them, or a
symlink, is skipped).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ssmgraph.graph.model import CompiledModel
from ssmgraph.interop.errors import HFFileError
from ssmgraph.serialization import model_directory, read_meta

FILES_FOLDER = "hf"
GENERATION_FILE = "generation_config.json"
CARRIED_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    GENERATION_FILE,
    "chat_template.jinja",
    "chat_template.json",
)
"""The tokenizer and generation files of a checkpoint directory (``save_pretrained`` of a model and its tokenizer)."""
TOKENIZER_FILES = tuple(name for name in CARRIED_FILES if name != GENERATION_FILE)
"""The tokenizer's files among them (what ``save_pretrained`` of a tokenizer writes, with its chat template)."""
MAX_FILE_BYTES = 1 << 30


def copy_files(source: Path, folder: Path, names: tuple[str, ...] | list[str] = CARRIED_FILES) -> list[str]:
    """Copy the ``names`` (of :data:`CARRIED_FILES`) that are regular files in ``source`` into ``folder``
    (created when one is copied); the names copied, sorted. Symlinks are followed: the Hugging Face
    cache links a snapshot's files to its blobs (``listed_files`` refuses them in ssmgraph's folders)."""
    copied = []
    for name in sorted(set(names) & set(CARRIED_FILES)):
        path = source / name
        if not path.is_file():
            continue
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise HFFileError(f"{path}: {size} bytes, more than a tokenizer file holds ({MAX_FILE_BYTES})", "remove the file")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / name)
        copied.append(name)
    return copied


def import_files(source: Path, folder: Path) -> list[str]:
    """Import: the checkpoint's tokenizer and generation files into ``folder/hf``."""
    return copy_files(source, folder / FILES_FOLDER)


def listed_files(directory: Path, meta: Mapping[str, Any]) -> list[str]:
    """The carried files meta.json lists that lie, as plain files (not symlinks), in ``directory/hf``."""
    hf = meta.get("hf")
    files = hf.get("files") if isinstance(hf, dict) else None
    if not isinstance(files, list):
        return []
    inside = directory / FILES_FOLDER
    if inside.is_symlink() or not inside.is_dir():
        return []
    return [
        n for n in files if isinstance(n, str) and n in CARRIED_FILES and not (inside / n).is_symlink() and (inside / n).is_file()
    ]


def export_files(directory: Path, meta: Mapping[str, Any], out: Path) -> list[str]:
    """Export: the files an imported (or merged) model carries, next to config.json in ``out``."""
    return copy_files(directory / FILES_FOLDER, out, listed_files(directory, meta))


def carried_metadata(checkpoint: str | Path | None, base: CompiledModel, merged: CompiledModel, folder: Path) -> dict[str, Any]:
    """Merge: meta.json's ``hf`` entry of the base model saved at ``checkpoint`` (with its files copied
    into ``folder/hf``) when the merged model has the base's blueprint; else nothing ({})."""
    if checkpoint is None or merged.blueprint.to_dict() != base.blueprint.to_dict():
        return {}
    directory = model_directory(Path(checkpoint))
    meta = read_meta(directory)
    hf = meta.get("hf")
    if not isinstance(hf, dict) or not isinstance(hf.get("config"), dict):
        return {}
    files = copy_files(directory / FILES_FOLDER, folder / FILES_FOLDER, listed_files(directory, meta))
    return {"hf": {**hf, "files": files}}
