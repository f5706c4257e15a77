"""Hugging Face checkpoints <-> ssmgraph models, for the GPT-2, GPT-NeoX, Llama (Mistral, Qwen2, Qwen3, Gemma, Gemma 2, Phi-3), Mamba and Mamba-2 families.

Import reads config.json with ``json`` and the weights with ``safetensors`` (a ``.bin``
only through a weights-only load), so it needs no transformers; export writes the
config.json and model.safetensors that ``transformers.AutoModelForCausalLM.from_pretrained``
loads. Both directions compute the same logits as transformers' own model (fp32).
docs/interop.md describes what maps and what does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ssmgraph.folders import atomic_directory, refuse_sources
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.graph.model import CompiledModel
from ssmgraph.interop.errors import HFExportError
from ssmgraph.interop.hf.checkpoint import HFConfig, read_config, read_weights, replacing_output, write_checkpoint
from ssmgraph.interop.hf.convert import check_structure, compile_layout, to_hf, to_ssmgraph
from ssmgraph.interop.hf.gemma import Gemma
from ssmgraph.interop.hf.gemma2 import Gemma2
from ssmgraph.interop.hf.gpt2 import GPT2
from ssmgraph.interop.hf.layout import HELP_LAYOUTS, Layout, ModelReader
from ssmgraph.interop.hf.llama import Llama
from ssmgraph.interop.hf.mamba import Mamba
from ssmgraph.interop.hf.mamba2 import Mamba2
from ssmgraph.interop.hf.metadata import export_files, import_files
from ssmgraph.interop.hf.neox import GPTNeoX
from ssmgraph.interop.hf.phi3 import Phi3
from ssmgraph.interop.hf.qwen import Mistral, Qwen2, Qwen3
from ssmgraph.progress import phase
from ssmgraph.serialization import is_saved_model, load, model_directory, read_meta, write_model_files

FAMILIES: tuple[type[Layout], ...] = (Mamba, GPT2, Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma2, Phi3, GPTNeoX, Mamba2)
"""In the order export tries their ``signature`` blocks (GPT-2, Llama and GPT-NeoX all have attention) and ``fits``
(the Llama-layout families differ in attention features; Gemma and Gemma 2 differ in their norms; Phi-3 has Llama's blueprint and comes after it: chosen
only when imported; GPT-NeoX has LayerNorm where they have RMSNorm, and comes after them, so that an attention model no family fits is compared
with Llama's layout; Mamba-2, alone with its block, comes last)."""

__all__ = ["FAMILIES", "export_hf", "import_hf", "layout_of", "read_hf"]


def import_hf(source: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Convert the checkpoint directory ``source`` into an ssmgraph model directory ``out``.

    ``out`` holds a plain blueprint.yaml, model.safetensors and meta.json (which keeps the
    original config under ``hf``), and the tokenizer and generation files in ``hf/``;
    ``ssmgraph.load(out)`` rebuilds the model."""
    source = Path(source).expanduser()
    with replacing_output(Path(out).expanduser(), overwrite, source=source, earlier=is_saved_model) as target:
        return _import(source, target)


def _import(source: Path, out: Path) -> Path:
    with phase("reading"):
        config, model, state = _convert(source)
    with atomic_directory(out) as folder, phase("writing"):
        files = import_files(source, folder)
        hf = {"source": str(source.resolve()), "config": config.data, "files": files}
        write_model_files(model, folder, state, extra_meta={"hf": hf})
    return out


def read_hf(source: str | Path) -> CompiledModel:
    """The checkpoint directory ``source`` as an ssmgraph model in memory, with the weights
    :func:`import_hf` would save (nothing is written; ``train --init`` starts from it)."""
    _, layout_model, state = _convert(Path(source).expanduser())
    model = compile_blueprint(layout_model.blueprint)
    state.update({alias: state[owner] for alias, owner in model.tied.items() if owner in state})
    model.load_state_dict(state, strict=True)
    return model


def _convert(source: Path) -> tuple[HFConfig, CompiledModel, dict[str, torch.Tensor]]:
    """config.json, the layout's model (on the meta device) and the checkpoint's tensors under its names."""
    config = read_config(source)
    layout = _family(config).from_config(config)
    weights = read_weights(source)
    model = compile_layout(layout)
    shapes = {k: v.shape for k, v in model.state_dict().items() if k not in model.tied}
    return config, model, to_ssmgraph(weights, layout, shapes, str(config.path))


def export_hf(run_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the model in ``run_dir`` (a saved model, or a training run's latest checkpoint) as a
    Hugging Face checkpoint directory ``out``: config.json and model.safetensors, and the tokenizer
    and generation files an import carried."""
    run_dir = Path(run_dir).expanduser()
    earlier = lambda folder: (folder / "config.json").is_file()
    with replacing_output(Path(out).expanduser(), overwrite, source=run_dir, earlier=earlier) as target:
        return _export(run_dir, target)


def _export(run_dir: Path, out: Path) -> Path:
    directory = model_directory(run_dir)
    refuse_sources(out, [directory])
    model, meta = load(directory), read_meta(directory)
    layout = layout_of(model, str(directory), meta)
    check_structure(model, compile_layout(layout), layout, str(directory))
    config = {**layout.hf_config(), **_carried(layout, meta)}
    tensors = to_hf(model.state_dict(), layout)
    with atomic_directory(out) as folder:
        write_checkpoint(folder, config, tensors)
        export_files(directory, meta, folder)
    return out


def _family(config: HFConfig) -> type[Layout]:
    names = ", ".join(f.model_type for f in FAMILIES)
    model_type = config.value("model_type", str, "")
    for family in FAMILIES:
        if family.model_type == model_type:
            return family
    problem = f"{model_type!r} is not supported" if model_type else "missing"
    raise config.fail("model_type", problem, f"ssmgraph converts the model types {names} (docs/interop.md)")


def layout_of(model: CompiledModel, where: str, meta: Mapping[str, Any] | None = None) -> Layout:
    """The Hugging Face layout export writes ``model`` with (``meta``: its meta.json, whose
    imported family is preferred); HFExportError (E603) when no family fits."""
    family = _detect(model, meta or {}, where)
    return family.from_model(ModelReader(model, family.title, where))


def _detect(model: CompiledModel, meta: Mapping[str, Any], where: str) -> type[Layout]:
    """The family whose signature block and features the model has, the imported one first (meta.json's, else the
    blueprint's name; a Mistral without window has Llama's features); without a fit, the first with the signature (whose structure
    check then names the difference)."""
    blocks = {info.block for info in model.nodes.values()}
    candidates = [family for family in FAMILIES if family.signature in blocks]
    # an imported layout's blueprint is named after its model_type: it tells a merged or re-saved Phi-3 from a Llama
    imported = meta.get("hf", {}).get("config", {}).get("model_type") or model.blueprint.name
    ordered = sorted(candidates, key=lambda family: family.model_type != imported)  # stable: the imported family first
    for family in ordered:
        if family.fits(model):
            return family
    if candidates:
        return candidates[0]
    raise HFExportError(f"{where}: no Hugging Face family fits a model of {', '.join(sorted(blocks))}", HELP_LAYOUTS)


def _carried(layout: Layout, meta: dict[str, Any]) -> dict[str, Any]:
    """Fields of the imported config.json that ssmgraph keeps but does not use (token ids)."""
    original = meta.get("hf", {}).get("config", {})
    if original.get("model_type") != layout.model_type:
        return {}
    return {k: original[k] for k in layout.carried if k in original}
