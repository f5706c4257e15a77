"""``ssmgraph compare``: linear CKA between every layer of two models on a task's inputs."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ssmgraph.blueprint import Blueprint
from ssmgraph.blueprint.names import submodule_name_ok
from ssmgraph.errors import SsmgraphError
from ssmgraph.folders import under_a_file
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.graph.model import CompiledModel
from ssmgraph.merge.compose import compose, model_taps, state_from_sources
from ssmgraph.merge.models import blueprint_of
from ssmgraph.merge.plots import heatmap
from ssmgraph.merge.similarity import cka_matrix
from ssmgraph.progress import phase
from ssmgraph.serialization import load as load_model
from ssmgraph.train.fitting import check_reads
from ssmgraph.train.tasks.base import Task


def tapped(model: CompiledModel, name: str) -> CompiledModel:
    """``model`` with its hidden states tapped after every layer (tap ``<name>.h``), same weights."""
    joint = compile_blueprint(Blueprint.from_dict(compose({name: blueprint_of(model)}, d_common=1), source=f"<{name} with taps>"))
    state = state_from_sources({name: model.state_dict()}, joint)
    joint.load_state_dict(state, strict=False)
    return joint.eval()


@torch.no_grad()
def tapped_states(probe: CompiledModel, name: str, batches: Iterable[Any]) -> list[torch.Tensor]:
    """The hidden states after each layer of ``probe`` (a model :func:`tapped` as ``name``) on
    ``batches``' inputs, each layer's as one (tokens × width) float64 matrix."""
    layers: list[list[torch.Tensor]] = []
    for batch in batches:
        _, taps = probe(batch.inputs, taps=[f"{name}.h"])
        found = model_taps(taps, name, "h")
        layers = layers or [[] for _ in found]
        for store, t in zip(layers, found):
            store.append(t.reshape(-1, t.shape[-1]).double())
    return [torch.cat(chunks) for chunks in layers]


def hidden_states(model: CompiledModel, name: str, task: Task, batches: int, batch_size: int) -> dict[str, torch.Tensor]:
    """Each layer's hidden states on held-out inputs, as (tokens × width) matrices."""
    states = tapped_states(tapped(model, name), name, task.eval_batches(batch_size, size=batch_size * batches))
    return {f"{name}.{i}": layer for i, layer in enumerate(states)}


def _layer_prefix(folder: str) -> str:
    """A model's folder name as the prefix of its layers' names (``runs-a`` -> ``runs_a``), or
    ``model`` where it could not name a tap (``2nd``, ``class``, ``train``)."""
    name = folder.replace("-", "_")
    return name if submodule_name_ok(name) else "model"


def compare_models(
    path_a: Path, path_b: Path, task: Task, out_dir: Path, *, batches: int = 8, batch_size: int = 32
) -> dict[str, Any]:
    """CKA of every layer pair of two saved models; writes ``cka.png`` and ``cka.json``."""
    names = ("a", "b") if Path(path_a).name == Path(path_b).name else (Path(path_a).name, Path(path_b).name)
    name_a, name_b = (_layer_prefix(n) for n in names)
    if name_a == name_b:
        name_a, name_b = "a", "b"
    if (out_dir.exists() and not out_dir.is_dir()) or under_a_file(out_dir):
        raise SsmgraphError(f"--out {out_dir} is (or lies under) a file; give a folder for cka.png and cka.json")
    with phase("loading"):
        model_a, model_b = load_model(path_a), load_model(path_b)
    for model in (model_a, model_b):
        check_reads(model, task)  # only the inputs: compare reads hidden states, not outputs
    with phase("reading hidden states", total=2, unit="models") as step:
        feats_a = hidden_states(model_a, name_a, task, batches, batch_size)
        step(1)
        feats_b = hidden_states(model_b, name_b, task, batches, batch_size)
        step(1)
    with phase("comparing"):
        cka = cka_matrix(list(feats_a.values()), list(feats_b.values()))
    out_dir.mkdir(parents=True, exist_ok=True)
    png = heatmap(cka, list(feats_a), list(feats_b), f"linear CKA: {path_a} vs {path_b}", out_dir / "cka.png", "CKA")
    result = {
        "a": str(path_a),
        "b": str(path_b),
        "layers_a": list(feats_a),
        "layers_b": list(feats_b),
        "cka": cka.tolist(),
        "png": str(png),
    }
    (out_dir / "cka.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result
