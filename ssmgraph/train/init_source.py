"""``train --init SOURCE``: start a run from the weights of a saved model instead of a fresh build.

SOURCE is a saved model folder (``ssmgraph build --out``, ``ssmgraph.save``, a merge output), a
training run (its latest checkpoint) or a Hugging Face checkpoint folder that ``ssmgraph import
hf`` reads (converted in memory; nothing is written into the source). The blueprint is the
source's own. Its expressions are resolved, so ``--set NAME=VALUE`` sets the argument ``NAME``
of every block that takes one (``dropout``) and must leave every weight's shape as it is: the
overridden blueprint is compiled and its parameters compared with the source's by name and shape.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssmgraph.blueprint.document import Body
from ssmgraph.errors import did_you_mean
from ssmgraph.folders import CHECKPOINTS
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.graph.model import CompiledModel
from ssmgraph.interop.hf import read_hf
from ssmgraph.interop.hf.checkpoint import CONFIG_FILE as HF_CONFIG
from ssmgraph.interop.hf.checkpoint import read_config
from ssmgraph.interop.hf.metadata import CARRIED_FILES, FILES_FOLDER, copy_files, listed_files
from ssmgraph.registry.plugins import get_registry
from ssmgraph.serialization import META_FILE, model_directory, read_meta
from ssmgraph.serialization import load as load_model
from ssmgraph.train.errors import TrainingError


class InitError(TrainingError):
    """``--init`` cannot start this run: the source is no model, or an override changes a weight's shape."""

    code = "E510"


@dataclass
class InitSource:
    """The model a run starts from, and where it came from (recorded in run.json)."""

    path: Path
    """The folder the weights were read from (for a run: its checkpoint)."""
    kind: str
    """``model`` (a saved model or merge output), ``run`` or ``hf``."""
    model: CompiledModel
    sha256: str
    """:func:`weights_hash` of the source's weights, before any override."""

    hf: dict[str, Any] | None = None
    """The Hugging Face config and the names of the tokenizer files the run carries (see :func:`carry_files`)."""

    def record(self) -> dict[str, Any]:
        return {"path": str(self.path.resolve()), "kind": self.kind, "sha256": self.sha256}


def weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 over the state dict (names, dtypes, shapes and bytes, in name order): the same weights
    give the same hash whichever file format or folder they were read from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{data.dtype}|{list(data.shape)}|".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_init(source: str | Path, overrides: Mapping[str, Any] | None = None) -> InitSource:
    """The model in ``source`` with ``overrides`` applied (see the module docstring)."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise InitError(
            f"--init {source}: {'a file' if source.exists() else 'nothing there'}; give a saved model folder, "
            "a training run or a Hugging Face checkpoint folder"
        )
    hf: dict[str, Any] | None = None
    if (source / HF_CONFIG).is_file() and not (source / META_FILE).is_file():
        path, kind, model = source, "hf", read_hf(source)
        hf = {"source": str(source.resolve()), "config": read_config(source).data, "files": present_files(source)}
    elif (source / META_FILE).is_file() or (source / CHECKPOINTS).is_dir():
        path = model_directory(source)
        kind = "model" if path == source else "run"
        model = load_model(path)
        meta = read_meta(path)
        if isinstance(meta.get("hf"), dict):
            hf = {**meta["hf"], "files": listed_files(path, meta)}
    else:
        raise InitError(
            f"--init {source}: not a saved model (no {META_FILE}), a training run (no {CHECKPOINTS}/) "
            f"or a Hugging Face checkpoint (no {HF_CONFIG})"
        )
    start = InitSource(path, kind, model, weights_hash(model), hf)
    if overrides:
        start.model = with_overrides(model, overrides, str(source))
    return start


def start_from(
    init: str | Path, blueprint: str | Path | None, overrides: Mapping[str, Any], model_view: str | None
) -> tuple[CompiledModel, dict[str, Any]]:
    """The model ``train(init=...)`` starts from and what run.json records about it. The blueprint
    is the source's: naming one too, or a view (``--model``), is an error."""
    if blueprint:
        raise InitError(
            f"--init {init} brings its own blueprint: leave out the BLUEPRINT argument ({blueprint}) "
            "(`ssmgraph train --init SOURCE --task ...`)"
        )
    if model_view:
        raise InitError(f"--init {init} trains the saved model as it is: leave out --model {model_view}")
    start = load_init(init, overrides)
    record = {"blueprint": None, "init": start.record(), "overrides": dict(overrides), "model": start.model.view}
    if start.hf is not None:
        record["hf"] = start.hf
    return start.model, record


def carry_files(run_dir: Path, record: Mapping[str, Any]) -> None:
    """Copy the tokenizer and generation files of an ``--init`` source that has them (a Hugging Face
    folder, an imported model) into ``RUN/hf/``; each checkpoint carries them and run.json's ``hf``
    entry, so ``export hf`` of the run writes them and the config's token ids back."""
    hf, init = record.get("hf"), record.get("init")
    if not isinstance(hf, dict) or not isinstance(init, dict):
        return
    folder = Path(init["path"]) if init.get("kind") == "hf" else Path(init["path"]) / FILES_FOLDER
    copy_files(folder, run_dir / FILES_FOLDER, hf.get("files", []))


def present_files(folder: Path) -> list[str]:
    """The tokenizer and generation files (of :data:`CARRIED_FILES`) that lie in ``folder``."""
    return [name for name in CARRIED_FILES if (folder / name).is_file()]


def with_overrides(model: CompiledModel, overrides: Mapping[str, Any], where: str) -> CompiledModel:
    """``model``'s blueprint with block arguments overridden, compiled and given ``model``'s weights;
    an override that changes a weight's shape (or adds or drops one) is an :class:`InitError`."""
    blueprint = copy.deepcopy(model.blueprint)
    takers = {name: _set_argument(blueprint.body, name, value) for name, value in overrides.items()}
    for name, count in takers.items():
        if count == 0:
            known = sorted(_argument_names(blueprint.body))
            resolved = (
                f"; the blueprint's parameter {name!r} was resolved when the model was built and no longer reaches any block"
                if name in blueprint.params
                else ""
            )
            raise InitError(
                f"--init {where}: --set {name}=...: no block of the model takes an argument {name!r}{resolved}. "
                f"With --init, --set changes block arguments that keep every weight's shape (e.g. dropout); "
                f"{did_you_mean(name, known)}"
            )
    for name, value in overrides.items():
        if name in blueprint.params:
            blueprint.params[name] = value
    with torch.random.fork_rng(devices=[]):  # the fresh weights are replaced below: leave the run's RNG as it was
        changed = compile_blueprint(blueprint, model=model.view)
    _check_same_weights(model, changed, overrides, where)
    changed.load_state_dict(model.state_dict())
    return changed


def _set_argument(body: Body, name: str, value: Any) -> int:
    """Set argument ``name`` on every node in ``body`` (nested bodies included) whose block takes it."""
    registry, count = get_registry(), 0
    for node in body.nodes.values():
        spec = registry.get(node.block) if node.block else None
        if spec is not None and spec.param(name) is not None:
            node.args[name] = value
            count += 1
        for inner in ([node.body] if node.body else []) + list(node.at.values()):
            count += _set_argument(inner, name, value)
    return count


def _argument_names(body: Body) -> set[str]:
    registry, names = get_registry(), set()
    for node in body.nodes.values():
        spec = registry.get(node.block) if node.block else None
        if spec is not None:
            names.update(p.name for p in spec.params)
        for inner in ([node.body] if node.body else []) + list(node.at.values()):
            names |= _argument_names(inner)
    return names


def _check_same_weights(source: CompiledModel, changed: CompiledModel, overrides: Mapping[str, Any], where: str) -> None:
    before = {k: tuple(v.shape) for k, v in source.state_dict().items()}
    after = {k: tuple(v.shape) for k, v in changed.state_dict().items()}
    sets = ", ".join(f"--set {k}={v!r}" for k, v in overrides.items())
    reshaped = [k for k in before if k in after and before[k] != after[k]]
    if reshaped:
        shown = "; ".join(f"{k} {list(before[k])} -> {list(after[k])}" for k in reshaped[:3])
        more = f" and {len(reshaped) - 3} more" if len(reshaped) > 3 else ""
        raise InitError(
            f"--init {where}: {sets} changes the shape of weights the run starts from: {shown}{more}. "
            "Only overrides that keep every weight's shape (dropout, ...) go with --init; "
            "train a new model from the blueprint to change sizes"
        )
    added, dropped = sorted(after.keys() - before.keys()), sorted(before.keys() - after.keys())
    if added or dropped:
        parts = ([f"adds {', '.join(added[:3])}"] if added else []) + ([f"drops {', '.join(dropped[:3])}"] if dropped else [])
        raise InitError(
            f"--init {where}: {sets} {' and '.join(parts)} (weights the source does not have, or has and the run would lose); "
            "only overrides that keep every weight go with --init"
        )
