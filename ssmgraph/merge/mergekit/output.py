"""Write a mergekit-dialect merge as Hugging Face writes a model: config.json, safetensors shards
(``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` with ``model.safetensors.index.json``),
the tokenizer files and chat template, and ``mergekit_config.yml`` (the config as given).
A merge of ssmgraph models writes an ssmgraph model folder instead (``ssm_inputs.py``).

Each shard's header is written first — every output tensor's shape and dtype are known from the
plan — then each tensor is merged and its bytes appended (cast to the output dtype a chunk at a
time), so no more than one tensor is held.
The folder is written atomically under its lock (:func:`ssmgraph.folders.atomic_directory`):
a killed merge leaves the previous folder, or none, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ssmgraph.errors import SsmgraphError
from ssmgraph.folders import atomic_directory, readable_by_others
from ssmgraph.interop.hf.metadata import GENERATION_FILE, TOKENIZER_FILES, copy_files
from ssmgraph.merge.mergekit.dialect import MergekitConfig
from ssmgraph.merge.mergekit.engine import MergePlan, Planned, merged_tensor, plan_merge
from ssmgraph.merge.mergekit.inputs import CHUNK_BYTES, DTYPE_NAMES, LAYER_COUNT_KEYS
from ssmgraph.merge.mergekit.ssm_inputs import SSMInput, check_ssm_output, finish_ssm_model
from ssmgraph.progress import advance, phase
from ssmgraph.serialization import FORMAT, WEIGHTS_FILE, is_saved_model, replacing

CONFIG_MARKER = "mergekit_config.yml"
DEFAULT_SHARD_SIZE = "5GB"
"""mergekit's default ``--out-shard-size`` (5B)."""
_CODES = {dtype: code for code, dtype in DTYPE_NAMES.items()}
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str) -> int:
    """ "500MB", "2GB", "5GiB", "1000000" -> bytes (decimal units as Hugging Face's ``max_shard_size``)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(text).upper())
    if not m or m[2] not in _UNITS or float(m[1]) <= 0:
        raise SsmgraphError(f"--out-shard-size {text!r}: expected a size such as 500MB, 2GB or 5GiB")
    return int(float(m[1]) * _UNITS[m[2]])


def _nbytes(item: Planned) -> int:
    return torch.Size(item.shape).numel() * torch.empty((), dtype=item.dtype).element_size()


def shard_layout(tensors: list[Planned], max_bytes: int) -> list[list[Planned]]:
    """Tensors in order, grouped into shards of at most ``max_bytes`` (a larger tensor alone)."""
    shards: list[list[Planned]] = [[]]
    size = 0
    for item in tensors:
        n = _nbytes(item)
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += n
    return shards


def _write_shard(path: Path, items: list[Planned], plan: MergePlan, generator: torch.Generator, fmt: str = "pt") -> None:
    header: dict[str, Any] = {"__metadata__": {"format": fmt}}
    offset = 0
    for item in items:
        n = _nbytes(item)
        header[item.name] = {"dtype": _CODES[item.dtype], "shape": list(item.shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for item in items:
            tensor = merged_tensor(plan, item, generator)
            assert tuple(tensor.shape) == item.shape, item.name
            _write_tensor(f, tensor, item.dtype)
            del tensor
            _start_writeback(f)
            advance()
    readable_by_others(path)


def _start_writeback(f: BinaryIO) -> None:
    """Start writing what the file holds to disk now, while the next tensors are merged, so the
    folder's closing fsync has little left to wait for (Linux: fadvise DONTNEED starts the
    writeback of dirty pages and drops the clean ones, which this process does not read again)."""
    if hasattr(os, "posix_fadvise"):
        f.flush()
        try:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


def _write_tensor(f: BinaryIO, tensor: torch.Tensor, dtype: torch.dtype) -> None:
    """The tensor's bytes as ``dtype``: as they lie when it is already that (no copy), else
    converted a chunk at a time (no second copy of the whole tensor)."""
    flat = tensor.reshape(-1)
    if not flat.numel():
        return
    if flat.dtype == dtype:
        f.write(memoryview(flat.view(torch.uint8).numpy()))
        return
    step = max(1, CHUNK_BYTES // flat.element_size())
    f.writelines(memoryview(flat[i : i + step].to(dtype).view(torch.uint8).numpy()) for i in range(0, flat.numel(), step))


def _config(plan: MergePlan) -> dict[str, Any]:
    config = dict(plan.reference.config)
    for key in LAYER_COUNT_KEYS:
        if isinstance(config.get(key), int):
            config[key] = plan.layers
    if isinstance(config.get("layer_types"), list):  # per-layer kinds follow the layers they come from
        config["layer_types"] = [
            (model.config.get("layer_types") or [None] * (i + 1))[i] if i < len(model.config.get("layer_types") or []) else None
            for model, i in plan.layer_sources
        ]
    if plan.vocab is not None:
        config["vocab_size"] = plan.vocab.size
    dtype = plan.config.out_dtype or plan.config.dtype
    if dtype is None:
        floats = [t.dtype for t in plan.tensors if t.dtype.is_floating_point]
        dtype = str(floats[0]).removeprefix("torch.") if floats else None
    if dtype is not None:
        for key in ("dtype", "torch_dtype"):
            if key in config or key == "dtype":
                config[key] = dtype
    return config


def _copy_tokenizer(plan: MergePlan, folder: Path) -> list[str]:
    cfg = plan.config
    source = cfg.tokenizer_source or plan.reference.folder
    copied = plan.vocab.save(folder) if plan.vocab is not None else copy_files(source, folder, TOKENIZER_FILES)
    copy_files(plan.reference.folder, folder, [GENERATION_FILE])
    if cfg.chat_template is not None:
        settings_path = folder / "tokenizer_config.json"
        settings = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else {}
        settings["chat_template"] = cfg.chat_template
        settings_path.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (folder / "chat_template.jinja").unlink(missing_ok=True)  # it would override tokenizer_config's
    return copied


def _check_earlier_merge(folder: Path) -> None:
    """--overwrite replaces an earlier merge (or an empty folder), never other files."""
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return
    if not ((folder / CONFIG_MARKER).is_file() and ((folder / "config.json").is_file() or is_saved_model(folder))):
        raise SsmgraphError(f"{folder} holds other files, not an earlier merge ({CONFIG_MARKER}); --overwrite replaces only that")


def write_merge(plan: MergePlan, folder: Path, shard_bytes: int, generator: torch.Generator) -> dict[str, Any]:
    shards = shard_layout(plan.tensors, shard_bytes)
    (folder / "config.json").write_text(json.dumps(_config(plan), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if len(shards) == 1:
        _write_shard(folder / "model.safetensors", shards[0], plan, generator)
    else:
        weight_map = {}
        for i, items in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _write_shard(folder / name, items, plan, generator)
            weight_map.update({item.name: name for item in items})
        index = {"metadata": {"total_size": sum(_nbytes(t) for t in plan.tensors)}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    tokenizer = _copy_tokenizer(plan, folder)
    return {"tensors": len(plan.tensors), "layers": plan.layers, "shards": len(shards), "tokenizer": tokenizer}


def run_mergekit(
    cfg: MergekitConfig, out_dir: Path, *, overwrite: bool = False, shard_size: str = DEFAULT_SHARD_SIZE
) -> dict[str, Any]:
    """Merge as the mergekit config says, into ``out_dir`` (atomically, under its lock)."""
    shard_bytes = parse_size(shard_size)
    reads = cfg.models() + ([cfg.tokenizer_source] if cfg.tokenizer_source else [])
    started = time.perf_counter()
    with replacing(Path(out_dir), overwrite, replaceable=_check_earlier_merge, reads=reads, what="--out") as target:
        with phase("planning"):
            plan = plan_merge(cfg)
        ssmgraph_model = isinstance(plan.reference, SSMInput)
        if ssmgraph_model:
            check_ssm_output(plan)
        with atomic_directory(target) as tmp, phase("merging", total=len(plan.tensors), unit="tensors"):
            generator = torch.Generator().manual_seed(0)  # the random methods' draws (DARE), tensor after tensor
            if ssmgraph_model:  # ssmgraph inputs give an ssmgraph model: one weights file, the reference's blueprint
                _write_shard(tmp / WEIGHTS_FILE, plan.tensors, plan, generator, FORMAT)
                summary = finish_ssm_model(plan, tmp)
            else:
                summary = write_merge(plan, tmp, shard_bytes, generator)
            (tmp / CONFIG_MARKER).write_text(plan.config.text, encoding="utf-8")
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary
