"""Training checkpoints: a saved model plus optimizer, RNG and trainer state, all safetensors/JSON.

``RUN/checkpoints/step_00000500/`` holds what :func:`ssmgraph.save` writes (so
``ssmgraph.load`` reads it) and ``optimizer.safetensors`` + ``trainer.json``. Each checkpoint
directory appears atomically; ``RUN/checkpoints/LATEST`` names the newest and is itself
replaced atomically, so a kill at any moment leaves the previous checkpoint loadable.
Nothing is pickled: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ssmgraph.graph.model import CompiledModel
from ssmgraph.serialization import CheckpointError, atomic_directory, weights_to_save, write_model_files, write_text_atomic

CHECKPOINTS = "checkpoints"
LATEST = "LATEST"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"
TRAINER_KEYS = ("data_rng", "torch_rng", "config")
_DAMAGED = "the checkpoint is damaged: delete its directory to resume from the one before, or start again with --overwrite"


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


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    folder = run_dir / CHECKPOINTS
    return sorted(p for p in folder.glob("step_*") if p.is_dir()) if folder.is_dir() else []


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / CHECKPOINTS / LATEST
    if pointer.is_file():
        candidate = run_dir / CHECKPOINTS / pointer.read_text(encoding="utf-8").strip()
        if candidate.is_dir():
            return candidate
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: CompiledModel,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint ``step`` atomically, point LATEST at it, drop all but the last ``keep``."""
    name = f"step_{step:08d}"
    target = run_dir / CHECKPOINTS / name
    tensors: dict[str, torch.Tensor] = {}
    optimizer_tree = flatten(optimizer.state_dict(), tensors, "optimizer")
    trainer_tree = flatten(trainer_state, tensors, "trainer")
    with atomic_directory(target) as tmp:
        write_model_files(model, tmp, weights_to_save(model, model.tied))
        save_file(tensors, str(tmp / OPTIMIZER_FILE))
        (tmp / TRAINER_FILE).write_text(json.dumps({"step": step, "optimizer": optimizer_tree, "trainer": trainer_tree}), encoding="utf-8")
    write_text_atomic(run_dir / CHECKPOINTS / LATEST, name)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_trainer_state(checkpoint: Path) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """(step, optimizer state dict, trainer state) of a checkpoint directory."""
    path = checkpoint / TRAINER_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read the training state ({exc}); {_DAMAGED}") from None
    try:
        tensors = load_file(str(checkpoint / OPTIMIZER_FILE))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{checkpoint / OPTIMIZER_FILE}: cannot read the optimizer state ({type(exc).__name__}: {exc}); {_DAMAGED}") from None
    try:
        step, optimizer, trainer = int(meta["step"]), unflatten(meta["optimizer"], tensors), unflatten(meta["trainer"], tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a training state (missing or bad {exc}); {_DAMAGED}") from None
    missing = [key for key in TRAINER_KEYS if not isinstance(trainer, dict) or key not in trainer]
    if missing or not isinstance(optimizer, dict):
        raise CheckpointError(f"{path}: not a training state (missing {', '.join(missing) or 'the optimizer state'}); {_DAMAGED}")
    return step, optimizer, trainer
