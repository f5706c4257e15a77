"""Run folders: where a run may go, what makes a folder a run, and the records it keeps.

A run directory holds ``run.json`` (what was trained, from which blueprint and config),
``train.yaml``, ``metrics.jsonl`` and ``checkpoints/`` (see ssmgraph.train.checkpoint).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ssmgraph.blueprint.yamlsafe import dump_yaml
from ssmgraph.folders import (
    CHECKPOINTS,
    RUN_FILE,
    folder_lock,
    latest_checkpoint,
    remove_tree,
    run_of_checkpoint,
    under_a_file,
    write_text_atomic,
)
from ssmgraph.safeio import read_json
from ssmgraph.train import distributed
from ssmgraph.train.best import BEST_DIR
from ssmgraph.train.config import TrainConfig, stored_config
from ssmgraph.train.ema import EMA_DIR
from ssmgraph.train.errors import TrainingError
from ssmgraph.train.lora import MERGED

RUN_MODELS = (BEST_DIR, EMA_DIR, MERGED)
"""The saved models a run writes beside its checkpoints (``keep_best``, ``ema``, ``lora.merge``)."""


def writer_lock(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    """The run folder's lock, held by the main process while it trains (see ssmgraph.folders)."""
    return folder_lock(run_dir) if distributed.current().is_main else contextlib.nullcontext()


def is_run(run_dir: Path) -> bool:
    return run_dir.is_dir() and ((run_dir / RUN_FILE).exists() or (run_dir / CHECKPOINTS).exists())


def check_run_path(run_dir: Path) -> None:
    """``run_dir`` must be a directory or nothing yet, not inside another run's checkpoints."""
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"--out {run_dir} is a file, not a run directory; choose another --out")
    if under_a_file(run_dir):
        raise TrainingError(f"--out {run_dir} lies under a file, not a directory; choose another --out")
    if run_of_checkpoint(run_dir) is not None:
        raise TrainingError(
            f"--out {run_dir} lies inside the checkpoints of the run {run_of_checkpoint(run_dir)}; choose another --out"
        )


def check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    """No earlier run in ``run_dir`` unless ``overwrite``, and never a folder of other files."""
    check_run_path(run_dir)
    if is_run(run_dir) and not overwrite:
        how = (
            "continue it with --resume, "
            if latest_checkpoint(run_dir) is not None
            else "one that stopped before its first checkpoint: "
        )
        raise TrainingError(f"{run_dir} already holds a run; {how}replace it with --overwrite, or choose another --out")
    if run_dir.is_dir() and not is_run(run_dir) and any(run_dir.iterdir()):  # --overwrite replaces a run, never other files
        raise TrainingError(
            f"--out {run_dir} holds other files, not a training run; choose a new or empty folder (e.g. {run_dir / 'run'})"
        )


def remove_run(run_dir: Path) -> None:
    """Delete an earlier run (only a directory that is one: it has run.json or checkpoints)."""
    if is_run(run_dir):
        remove_tree(run_dir)


def read_run_record(run_dir: Path) -> dict[str, Any]:
    """run.json of a run directory, checked enough that a damaged one is named, not a traceback."""
    path, fix = run_dir / RUN_FILE, "restore the file, or start a new run with --overwrite"
    record = read_json(path, what="cannot read the run record", error=TrainingError, fix=fix, finite=False)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise TrainingError(f"{path}: not a run record (no 'config' mapping); {fix}")
    return record


def run_of_model(model_dir: Path) -> Path | None:
    """The run that ``model_dir`` is or belongs to: the run itself, one of its checkpoints, or
    its ``best/``, ``ema/`` or ``merged/`` model; None for a model saved on its own."""
    if (model_dir / RUN_FILE).is_file():
        return model_dir
    parent = model_dir.resolve().parent
    if model_dir.resolve().name in RUN_MODELS and (parent / RUN_FILE).is_file():
        return parent
    return run_of_checkpoint(model_dir)


def config_of_model(model_dir: Path) -> TrainConfig | None:
    """The train config of the run that ``model_dir`` is or belongs to (its task and task options)."""
    run = run_of_model(model_dir)
    return None if run is None else config_from(read_run_record(run)["config"], run / RUN_FILE)


def config_from(mapping: Mapping[str, Any], source: Path) -> TrainConfig:
    """A TrainConfig from a stored mapping, checked like a fresh config (E500 naming the file and key)."""
    return stored_config(mapping, source, TrainingError)


def write_run_files(run_dir: Path, record: Mapping[str, Any], config: TrainConfig) -> None:
    """Create the run folder with ``run.json`` (``record``) and ``train.yaml`` (the config)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / RUN_FILE, json.dumps(record, indent=2, default=str))
    write_text_atomic(run_dir / "train.yaml", dump_yaml(config.to_dict()))
