"""Hugging Face checkpoints <-> ssmgraph models, for the GPT-2, Llama and Mamba families.

Import reads config.json with ``json`` and the weights with ``safetensors`` (a ``.bin``
only through a weights-only load), so it needs no transformers; export writes the
config.json and model.safetensors that ``transformers.AutoModelForCausalLM.from_pretrained``
loads. Both directions compute the same logits as transformers' own model (fp32).
docs/interop.md describes what maps and what does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssmgraph.folders import atomic_directory, folder_lock, follow_link, refuse_checkpoint_target, refuse_sources
from ssmgraph.graph.model import CompiledModel
from ssmgraph.interop.errors import HFExportError
from ssmgraph.interop.hf.checkpoint import HFConfig, check_output, read_config, read_weights, write_checkpoint
from ssmgraph.interop.hf.convert import check_structure, compile_layout, to_hf, to_ssmgraph
from ssmgraph.interop.hf.gpt2 import GPT2
from ssmgraph.interop.hf.layout import HELP_LAYOUTS, Layout, ModelReader
from ssmgraph.interop.hf.llama import Llama
from ssmgraph.interop.hf.mamba import Mamba
from ssmgraph.serialization import is_saved_model, load, model_directory, read_meta, write_model_files

FAMILIES: tuple[type[Layout], ...] = (Mamba, GPT2, Llama)
"""In the order export tries their ``signature`` blocks (GPT-2 and Llama both have attention)."""

__all__ = ["FAMILIES", "export_hf", "import_hf"]


def import_hf(source: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Convert the checkpoint directory ``source`` into an ssmgraph model directory ``out``.

    ``out`` holds a plain blueprint.yaml, model.safetensors and meta.json (which keeps the
    original config under ``hf``); ``ssmgraph.load(out)`` rebuilds the model."""
    source, out = Path(source).expanduser(), follow_link(Path(out).expanduser())
    with folder_lock(out):
        return _import(source, out, overwrite)


def _import(source: Path, out: Path, overwrite: bool) -> Path:
    check_output(out, overwrite, source=source, earlier=is_saved_model)
    refuse_checkpoint_target(out)
    config = read_config(source)
    layout = _family(config).from_config(config)
    weights = read_weights(source)
    model = compile_layout(layout)
    shapes = {k: v.shape for k, v in model.state_dict().items() if k not in model.tied}
    state = to_ssmgraph(weights, layout, shapes, str(config.path))
    with atomic_directory(out) as folder:
        write_model_files(model, folder, state, extra_meta={"hf": {"source": str(source.resolve()), "config": config.data}})
    return out


def export_hf(run_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the model in ``run_dir`` (a saved model, or a training run's latest checkpoint) as a
    Hugging Face checkpoint directory ``out``: config.json and model.safetensors."""
    run_dir, out = Path(run_dir).expanduser(), follow_link(Path(out).expanduser())
    with folder_lock(out):
        return _export(run_dir, out, overwrite)


def _export(run_dir: Path, out: Path, overwrite: bool) -> Path:
    check_output(out, overwrite, source=run_dir, earlier=lambda folder: (folder / "config.json").is_file())
    directory = model_directory(run_dir)
    refuse_sources(out, [directory])
    model = load(directory)
    family = _detect(model, str(directory))
    layout = family.from_model(ModelReader(model, family.title, str(directory)))
    check_structure(model, compile_layout(layout), layout, str(directory))
    config = {**layout.hf_config(), **_carried(layout, read_meta(directory))}
    tensors = to_hf(model.state_dict(), layout)
    with atomic_directory(out) as folder:
        write_checkpoint(folder, config, tensors)
    return out


def _family(config: HFConfig) -> type[Layout]:
    names = ", ".join(f.model_type for f in FAMILIES)
    model_type = config.value("model_type", str, "")
    for family in FAMILIES:
        if family.model_type == model_type:
            return family
    problem = f"{model_type!r} is not supported" if model_type else "missing"
    raise config.fail("model_type", problem, f"ssmgraph converts the model types {names} (docs/interop.md)")


def _detect(model: CompiledModel, where: str) -> type[Layout]:
    blocks = {info.block for info in model.nodes.values()}
    for family in FAMILIES:
        if family.signature in blocks:
            return family
    raise HFExportError(f"{where}: no Hugging Face family fits a model of {', '.join(sorted(blocks))}", HELP_LAYOUTS)


def _carried(layout: Layout, meta: dict[str, Any]) -> dict[str, Any]:
    """Fields of the imported config.json that ssmgraph keeps but does not use (token ids)."""
    original = meta.get("hf", {}).get("config", {})
    if original.get("model_type") != layout.model_type:
        return {}
    return {k: original[k] for k in layout.carried if k in original}
