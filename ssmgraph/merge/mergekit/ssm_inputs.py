"""ssmgraph models as the inputs of a mergekit-dialect config, and the ssmgraph model it writes.

A ``model:`` entry may name an ssmgraph model — a saved model folder (blueprint.yaml,
model.safetensors, meta.json) or a training run (its latest checkpoint) — instead of a Hugging
Face folder. Its tensors are read one at a time from model.safetensors under ssmgraph's names
(``blocks.3.mix.qkv.weight``), so the config's filters match those names (``mix``, ``ffn``,
``norm``), and layers are the ``blocks.N`` (``layers.N``, ``h.N``) of the model's stack. A
tensor that the model's Hugging Face layout stores as several (an imported Llama's stacked
``qkv``: q_proj, k_proj, v_proj) is merged part by part (:func:`ssmgraph.merge.parts.fused_parts`),
as mergekit merges the Hugging Face tensors and as native recipes do.

The output of ssmgraph inputs is an ssmgraph model folder: the blueprint of the reference model
(the base, else the first), meta.json (with the reference's Hugging Face metadata when it was
imported, so the merge exports back), model.safetensors streamed tensor by tensor, and
``mergekit_config.yml``. Its layers must be the blueprint's: the merged tensors must be exactly
the blueprint's, and every output layer must come from layers whose nodes have the same
arguments (a slice that moves a Gemma 2 sliding-window layer onto a global one is refused).
Inputs of both kinds in one config are refused: import the Hugging Face folders first.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ssmgraph.blueprint import load_blueprint
from ssmgraph.errors import Collector
from ssmgraph.folders import CHECKPOINTS
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.graph.model import CompiledModel
from ssmgraph.interop.hf.metadata import carried_metadata
from ssmgraph.merge.mergekit.inputs import LAYER, HFInput
from ssmgraph.merge.parts import fused_parts
from ssmgraph.serialization import (
    BLUEPRINT_FILE,
    WEIGHTS_FILE,
    is_saved_model,
    model_directory,
    read_meta,
    write_model_description,
)

if TYPE_CHECKING:  # engine.py reads these inputs
    from ssmgraph.merge.mergekit.engine import MergePlan

HELP_MIXED = (
    "merge models of one kind: import the Hugging Face folders (ssmgraph import hf DIR OUT) to merge ssmgraph models, "
    "or export the ssmgraph models (ssmgraph export hf RUN OUT) to merge Hugging Face folders"
)


def is_ssmgraph_model(folder: Path) -> bool:
    """A saved ssmgraph model folder, or a training run (a folder with ``checkpoints/``)."""
    return is_saved_model(folder) or (folder / CHECKPOINTS).is_dir()


class SSMInput(HFInput):
    """One ssmgraph model, read as the dialect reads a Hugging Face folder, under ssmgraph's tensor names."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.directory = model_directory(folder)
        self.meta = read_meta(self.directory)
        self.config: dict[str, Any] = {}  # no config.json: the blueprint says what the model is
        self.model = describe(self.directory, self.meta)
        self.index([self.directory / WEIGHTS_FILE])
        self.parts = fused_parts(self.model)

    @property
    def num_layers(self) -> int:
        return max(self.layers) + 1 if self.layers else 0  # a model without a stack: every tensor is outside the layers


def describe(directory: Path, meta: dict[str, Any]) -> CompiledModel:
    """The saved model's graph and tensor shapes, compiled on the meta device (no memory for weights)."""
    blueprint = load_blueprint(directory / BLUEPRINT_FILE)
    with torch.device("meta"):
        return compile_blueprint(blueprint, model=meta.get("model"))


def check_ssm_output(plan: MergePlan) -> None:
    """Refuse, before anything is written, an ssmgraph merge whose tensors are not the reference's
    blueprint's, whose layers come from layers built otherwise, or that asks for a tokenizer."""
    errors = Collector()
    cfg, reference = plan.config, plan.reference
    assert isinstance(reference, SSMInput)
    top = cfg.marks.get("top")
    for key, value in (("tokenizer_source", cfg.tokenizer_source), ("chat_template", cfg.chat_template)):
        if value is not None:
            errors.add(
                "E112",
                f"{key}: ssmgraph model inputs carry the base's Hugging Face files (meta.json's hf), not a tokenizer of their own",
                top,
                key,
                f"leave {key} out, or merge Hugging Face folders",
            )
    model = reference.model
    want = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in model.tied}
    have = {item.name: item.shape for item in plan.tensors}
    if want != have:
        differ = sorted(set(want) ^ set(have)) or sorted(k for k in want if want[k] != have[k])
        errors.add(
            "E112",
            f"the merged model has {plan.layers} layers and its tensors differ from the blueprint of "
            f"{reference.folder.name} ({', '.join(differ[:3])}): an ssmgraph merge keeps the reference model's blueprint",
            top,
            "slices",
            "use slices that give every layer of the base model once, or merge Hugging Face folders (export first)",
        )
    foreign = _foreign_layer(plan)
    if foreign is not None:
        source, i, j = foreign
        errors.add(
            "E112",
            f"output layer {j} is merged from layer {i} of {source.folder.name}, whose nodes are built otherwise "
            f"than layer {j} of {reference.folder.name}'s blueprint (block or arguments)",
            top,
            "slices",
            "an ssmgraph merge keeps the reference model's blueprint: take each layer from a layer built alike",
        )
    errors.raise_if_any()


def _foreign_layer(plan: MergePlan) -> tuple[SSMInput, int, int] | None:
    """The first (source, its layer i, output layer j) whose nodes differ from layer j of the reference's
    blueprint, over every source of every output layer; None when all are built alike."""
    reference = plan.reference
    assert isinstance(reference, SSMInput)
    checked: set[tuple[Path, int, int]] = set()
    for item in plan.tensors:
        out = LAYER.match(item.name)
        if out is None:
            continue
        for source, name, _ in item.inputs:
            src = LAYER.match(name)
            if src is None or not isinstance(source, SSMInput):
                continue
            key = (source.folder, int(src["index"]), int(out["index"]))
            if key not in checked:
                checked.add(key)
                if _layer_nodes(source.model, key[1]) != _layer_nodes(reference.model, key[2]):
                    return source, key[1], key[2]
    return None


def _layer_nodes(model: CompiledModel, index: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """rest -> (block, arguments) of the nodes of layer ``index`` of the model's stack."""
    out = {}
    for path, info in model.nodes.items():
        m = LAYER.match(path + ".")  # LAYER wants a rest after the index: a node path has none of its own
        if m and int(m["index"]) == index:
            out[m["rest"]] = (info.block, dict(info.args))
    return out


def finish_ssm_model(plan: MergePlan, folder: Path) -> dict[str, Any]:
    """blueprint.yaml and meta.json of the merged model (its weights are written already)."""
    reference = plan.reference
    assert isinstance(reference, SSMInput)
    carried = carried_metadata(reference.directory, reference.model, reference.model, folder)  # HF config and files
    models = [str(m.folder) for m in plan.inputs.values()]
    merge = {"method": plan.config.method.name, "dialect": "mergekit", "models": models}
    write_model_description(reference.model, folder, {"merge": merge, **carried})
    return {"tensors": len(plan.tensors), "layers": plan.layers, "shards": 1, "tokenizer": []}
