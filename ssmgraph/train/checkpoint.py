"""Training checkpoints: a saved model plus optimizer, RNG and trainer state, all safetensors/JSON.

``RUN/checkpoints/step_00000500/`` holds what :func:`ssmgraph.save` writes (so
``ssmgraph.load`` reads it) and ``optimizer.safetensors`` + ``trainer.json``. Each checkpoint
directory appears atomically; ``RUN/checkpoints/LATEST`` names the newest and is itself
replaced atomically, so a kill at any moment leaves the previous checkpoint loadable.
Nothing is pickled: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ssmgraph.folders import (
    CHECKPOINTS,
    LATEST,
    RUN_FILE,
    CheckpointError,
    atomic_directory,
    checkpoint_dirs,
    remove_tree,
    repair,
    write_text_atomic,
)
from ssmgraph.graph.model import CompiledModel
from ssmgraph.interop.hf.metadata import FILES_FOLDER, copy_files
from ssmgraph.safeio import check_fields, read_json
from ssmgraph.serialization import weights_to_save, write_model_files, write_safetensors
from ssmgraph.train.errors import DAMAGED

OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"
TRAINER_KEYS = ("data_rng", "torch_rng", "config")


def flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "") -> Any:
    """Replace every tensor inside ``obj`` by a reference, collecting tensors by key."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "tensor"
        tensors[key] = obj.detach().contiguous().cpu()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten(v, tensors, f"{prefix}.{k}" if prefix else str(k))] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    return obj


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: CompiledModel,
    optimizer: torch.optim.Optimizer | Mapping[str, Any],
    trainer_state: dict[str, Any],
    keep: int,
    weights: Mapping[str, torch.Tensor] | None = None,
    hf: Mapping[str, Any] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically, point LATEST at it, drop all but the last ``keep``.

    ``optimizer`` is the optimizer or its state dict, ``weights`` the model's (default: its own,
    tied aliases dropped): a sharded run passes the full states it gathered. ``hf`` is the run's
    :func:`carried_hf` (read once per run): the checkpoint carries it and its files."""
    name = f"step_{step:08d}"
    target = run_dir / CHECKPOINTS / name
    tensors: dict[str, torch.Tensor] = {}
    state = optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else dict(optimizer)
    optimizer_tree = flatten(state, tensors, "optimizer")
    trainer_tree = flatten(trainer_state, tensors, "trainer")
    repair(run_dir / CHECKPOINTS)  # what a killed earlier write left (the trainer holds the run's lock)
    with atomic_directory(target) as tmp:
        weights = weights if weights is not None else weights_to_save(model, model.tied)
        write_model_files(model, tmp, weights, {"hf": hf} if hf else None)
        if hf:
            copy_files(run_dir / FILES_FOLDER, tmp / FILES_FOLDER, hf["files"])
        write_safetensors(tensors, tmp / OPTIMIZER_FILE)
        (tmp / TRAINER_FILE).write_text(
            json.dumps({"step": step, "optimizer": optimizer_tree, "trainer": trainer_tree}), encoding="utf-8"
        )
    write_text_atomic(run_dir / CHECKPOINTS / LATEST, name)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        remove_tree(old)
    return target


def carried_hf(run_dir: Path) -> dict[str, Any] | None:
    """run.json's ``hf`` entry (a run started with ``--init`` from a Hugging Face folder or an imported
    model): its config and the tokenizer files in ``RUN/hf/`` that each checkpoint carries."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        return None
    record = read_json(path, what="cannot read the run record", error=CheckpointError, fix=DAMAGED, finite=False)
    hf = record.get("hf") if isinstance(record, dict) else None
    if not isinstance(hf, dict) or not isinstance(hf.get("config"), dict):
        return None
    return {**hf, "files": [n for n in hf.get("files", []) if isinstance(n, str)]}


def load_trainer_state(checkpoint: Path) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """(step, optimizer state dict, trainer state) of a checkpoint directory, their types checked
    so that a damaged or tampered trainer.json is an error naming it, not a traceback mid-run."""
    path = checkpoint / TRAINER_FILE
    meta = read_json(path, what="cannot read the training state", error=CheckpointError, fix=DAMAGED)
    check_fields(meta, {"step": int, "optimizer": dict, "trainer": dict}, source=path, error=CheckpointError, fix=DAMAGED)
    if meta["step"] < 0:
        raise CheckpointError(f"{path}: key 'step': {meta['step']} is negative; {DAMAGED}")
    try:
        tensors = load_file(str(checkpoint / OPTIMIZER_FILE))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(
            f"{checkpoint / OPTIMIZER_FILE}: cannot read the optimizer state ({type(exc).__name__}: {exc}); {DAMAGED}"
        ) from None
    try:
        optimizer, trainer = unflatten(meta["optimizer"], tensors), unflatten(meta["trainer"], tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a training state (missing or bad {exc}); {DAMAGED}") from None
    check_fields(
        optimizer, {"state": dict, "param_groups": list}, source=path, error=CheckpointError, where="optimizer", fix=DAMAGED
    )
    fields = {key: dict if key == "config" else torch.Tensor for key in (*TRAINER_KEYS, "cuda_rng")}
    check_fields(trainer, fields, source=path, error=CheckpointError, optional={"cuda_rng"}, where="trainer", fix=DAMAGED)
    for key in sorted(fields.keys() & trainer.keys() - {"config"}):
        if trainer[key].dtype != torch.uint8:
            raise CheckpointError(
                f"{path}: key 'trainer.{key}': an RNG state is a uint8 tensor, not {trainer[key].dtype}; {DAMAGED}"
            )
    return meta["step"], optimizer, trainer
