"""Hugging Face model folders read lazily: config.json, and each tensor straight from its
safetensors file (a positioned read of its bytes, no memory map), sharded or not.

The shard index is read and checked (every shard inside the folder and present) by
:mod:`ssmgraph.interop.hf.checkpoint`, the module that imports checkpoints.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import torch

from ssmgraph.interop.errors import HFFileError
from ssmgraph.interop.hf.checkpoint import SAFETENSORS_FILE, read_config, read_shard_index

LAYER = re.compile(r"^(?P<head>(?:.*\.)?(?:layers|h|blocks)\.)(?P<index>\d+)\.(?P<rest>.+)$")
"""``model.layers.3.self_attn.q_proj.weight`` -> head ``model.layers.``, index 3, rest ``self_attn.q_proj.weight``."""
DTYPE_NAMES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
CHUNK_BYTES = 1 << 22
"""Tensors stored in another dtype than the one they are read into are converted this many
bytes (of the destination) at a time."""
MAX_HEADER = 100_000_000
"""safetensors' own limit on a header's size."""
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


class HFInput:
    """One Hugging Face model folder: its config, and where each tensor lies (file, shape, dtype)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.config: dict[str, Any] = read_config(folder).data
        index = folder / f"{SAFETENSORS_FILE}.index.json"
        if index.is_file():
            files, weight_map = read_shard_index(index)
        elif (folder / SAFETENSORS_FILE).is_file():
            files, weight_map = [folder / SAFETENSORS_FILE], {}
        else:
            raise HFFileError(
                f"{folder}: no safetensors weights (model.safetensors or model.safetensors.index.json)",
                "convert the weights to safetensors: model.save_pretrained(DIR) writes them",
            )
        self.index(files)
        missing = sorted(weight_map.keys() - self.shapes.keys())
        if missing:
            raise HFFileError(
                f"{index}: names tensors that no shard holds: {', '.join(missing[:3])}", "download the checkpoint again"
            )

    def index(self, files: list[Path]) -> None:
        """Where each tensor of ``files`` lies, its shape and dtype, from the safetensors headers; and
        which layer each belongs to (the names matched against :data:`LAYER` once, here)."""
        self.parts: dict[str, tuple[int, ...]] = {}
        """Tensors that are several stacked by rows, merged part by part (ssmgraph models: ssm_inputs.py)."""
        self.where: dict[str, tuple[Path, int, int]] = {}
        self.shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self.layers: dict[int, dict[str, str]] = {}
        """Layer index -> rest -> full name of its tensors (``model.layers.3.mlp.up_proj.weight``: 3, ``mlp.up_proj.weight``)."""
        self.outside: list[str] = []
        """The tensors outside the layers (embeddings, final norm, head), in the files' order."""
        for file in files:
            try:
                start, header = _header(file)
                for key, entry in header.items():
                    if key == "__metadata__":
                        continue
                    first, last = entry["data_offsets"]
                    self.shapes[key] = (tuple(entry["shape"]), DTYPE_NAMES[entry["dtype"]])
                    self.where[key] = (file, start + first, last - first)
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
                raise HFFileError(
                    f"{file}: cannot read weights ({type(exc).__name__}: {exc})", "download the checkpoint again"
                ) from None
        for name in self.shapes:
            m = LAYER.match(name)
            if m:
                self.layers.setdefault(int(m["index"]), {})[m["rest"]] = name
            else:
                self.outside.append(name)

    @property
    def num_layers(self) -> int | None:
        for key in LAYER_COUNT_KEYS:
            if isinstance(self.config.get(key), int):
                return int(self.config[key])
        return max(self.layers) + 1 if self.layers else None

    def layer_names(self, index: int) -> dict[str, str]:
        """rest -> full name of the tensors of layer ``index`` (the index's own dict: not to be changed)."""
        return self.layers.get(index, {})

    def outside_layers(self) -> list[str]:
        return list(self.outside)

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor, read from its file now into a fresh tensor: only this tensor's bytes enter
        the process (a memory map's touched pages would stay resident, counted in its memory)."""
        shape, dtype = self.shapes[name]
        out = torch.empty(shape, dtype=dtype)
        self.read_into(name, out)
        return out

    def read_into(self, name: str, out: torch.Tensor, via: torch.dtype | None = None) -> None:
        """Read the tensor into ``out`` (contiguous, of its shape, any dtype): as ``.to(via).to(out.dtype)``
        of the stored tensor, but straight into ``out`` when the dtypes agree, else converted a chunk
        at a time, so no second copy of the whole tensor is made."""
        file, offset, size = self.where[name]
        shape, dtype = self.shapes[name]
        assert tuple(out.shape) == shape and out.is_contiguous(), name
        if not size:
            return
        flat = out.reshape(-1)
        direct = out.dtype == dtype and via in (None, dtype)
        step = flat.numel() if direct else max(1, CHUNK_BYTES // flat.element_size())
        chunk = None if direct else torch.empty(min(step, flat.numel()), dtype=dtype)
        with file.open("rb") as f:
            f.seek(offset)
            for start in range(0, flat.numel(), step):
                part = flat[start : start + step]
                into = part if chunk is None else chunk[: part.numel()]
                if f.readinto(memoryview(into.view(torch.uint8).numpy())) != into.numel() * into.element_size():
                    raise HFFileError(f"{file}: {name} is cut short", "download the checkpoint again")
                if chunk is not None:
                    part.copy_(into if via is None or via == dtype else into.to(via))


def is_hf_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(
        (folder / name).is_file() for name in (SAFETENSORS_FILE, f"{SAFETENSORS_FILE}.index.json")
    )


def is_pre(name: str) -> bool:
    """A tensor outside the layers that comes before them (the embeddings), as mergekit's ``pre_weights``."""
    return "embed" in name or name.split(".")[-2:-1] in (["wte"], ["wpe"])


def _header(file: Path) -> tuple[int, dict[str, Any]]:
    """Where a safetensors file's data starts, and its header, checked as ``safe_open`` checks it
    (offsets contiguous from 0 to the end of the file, sizes that fit shapes and dtypes) but
    without mapping the file: a memory map's pages, once touched, count in the process's memory."""
    length = file.stat().st_size
    with file.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > min(length - 8, MAX_HEADER):
            raise ValueError(f"header of {size} bytes in a file of {length}")
        header = json.loads(f.read(size))
    spans = sorted((e["data_offsets"], k) for k, e in header.items() if k != "__metadata__")
    end = 0
    for (first, last), key in spans:
        shape, dtype = header[key]["shape"], DTYPE_NAMES[header[key]["dtype"]]
        expected = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        if first != end or last - first != expected:
            raise ValueError(f"{key}: data offsets {[first, last]} do not fit its shape {shape} or the tensor before it")
        end = last
    if 8 + size + end != length:
        raise ValueError(f"the tensors end at byte {8 + size + end}, the file at {length}")
    return 8 + size, header
