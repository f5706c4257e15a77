"""The conversions every family shares: tensors both ways, and the export's structure check."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ssmgraph.blueprint import Blueprint
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.graph.model import CompiledModel
from ssmgraph.interop.errors import HFExportError, HFWeightsError
from ssmgraph.interop.hf.checkpoint import HFWeights
from ssmgraph.interop.hf.layout import HELP_LAYOUTS, Layout

IGNORED_ARGS = frozenset(
    {"dropout", "hidden", "multiple_of", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor", "ssm_lr", "scan"}
)
"""Block arguments the export does not compare: they set only initialisation or training, or
a width that the tensor shapes (compared too) already show."""


def compile_layout(layout: Layout) -> CompiledModel:
    """The layout's blueprint compiled on the meta device: graph and shapes, no memory for weights."""
    blueprint = Blueprint.from_dict(layout.blueprint(), source=f"<{layout.model_type} layout>")
    with torch.device("meta"):
        return compile_blueprint(blueprint)


def to_ssmgraph(
    weights: HFWeights, layout: Layout, shapes: Mapping[str, torch.Size], config_file: str
) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under ssmgraph names, checked against the shapes the config implies."""
    names = {_prefixed(k, layout): k for k in weights.tensors}  # LM-model name -> name in the file
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    for m in layout.tensor_maps():
        missing = [k for k in m.hf if k not in names]
        if missing:
            raise HFWeightsError(
                f"{weights.files()}: no tensor {missing[0]!r}, which {config_file} implies (ssmgraph's {m.ssm})",
                "config.json and the weights come from different models, or the checkpoint is a base model without its LM head",
            )
        used.update(m.hf)
        found = [weights.tensors[names[k]] for k in m.hf]
        parts = [t.T if m.transpose else t for t in found]
        tensor = parts[0] if len(parts) == 1 else torch.cat(parts)
        if m.interleaved and tensor.shape[0] % (3 * m.interleaved) == 0:  # otherwise the shape check below fails
            tensor = _regroup(tensor, m.interleaved, 3)  # (heads, 3) -> (3, heads)
        if m.rows is not None:
            start, stop, total = m.rows
            whole = tensor
            tensor = whole[start:stop] if whole.shape[0] == total else whole
        if tensor.shape != shapes[m.ssm]:
            have = ", ".join(f"{names[k]} {tuple(t.shape)}" for k, t in zip(m.hf, found, strict=True))
            want = tuple(shapes[m.ssm])[::-1] if m.transpose else tuple(shapes[m.ssm])
            want = (m.rows[2], *want[1:]) if m.rows is not None else want
            raise HFWeightsError(
                f"{weights.origin[names[m.hf[0]]]}: tensor {have} does not fit {config_file}, which implies {want}"
                + (" in all" if len(m.hf) > 1 else ""),
                "config.json and the weights come from different models; "
                "check the size fields (hidden size, heads, layers, vocabulary)",
            )
        out[m.ssm] = tensor.contiguous()
    unexpected = sorted(names[k] for k in names if k not in used and not layout.is_ignored(k))
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        raise HFWeightsError(
            f"{weights.files()}: tensors that the {layout.title} LM layout of {config_file} has no place for: {shown}",
            "the checkpoint has parts ssmgraph does not convert (another head, cross-attention), "
            "or more layers than config.json says",
        )
    return out


def _prefixed(key: str, layout: Layout) -> str:
    """Base-model checkpoints (GPT2Model, ...) name tensors without the LM model's attribute."""
    return key if key.startswith((layout.prefix, "lm_head.")) or key == layout.head_key else layout.prefix + key


def _regroup(tensor: torch.Tensor, outer: int, inner: int) -> torch.Tensor:
    """Rows in ``outer`` × ``inner`` blocks reordered to ``inner`` × ``outer``: (heads, 3) -> (3, heads)
    gathers GPT-NeoX's per-head q, k, v into q | k | v, (3, heads) -> (heads, 3) interleaves them back."""
    return tensor.reshape(outer, inner, -1, *tensor.shape[1:]).transpose(0, 1).reshape(tensor.shape)


def to_hf(state: Mapping[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """A run's tensors under Hugging Face names: split, stacked, transposed, and zeros for absent biases."""
    out: dict[str, torch.Tensor] = {}
    stacked: dict[str, list[tuple[int, torch.Tensor]]] = {}  # hf name -> (start row, ssmgraph tensor)
    for m in layout.tensor_maps():
        tensor = state.get(m.ssm)
        if m.rows is not None and tensor is not None:
            stacked.setdefault(m.hf[0], []).append((m.rows[0], tensor))
            continue
        if tensor is None and m.zeros_like is not None:
            like = state[m.zeros_like]
            tensor = torch.zeros(like.shape[0], dtype=like.dtype)
        if tensor is None:
            continue
        parts = tensor.split(m.split) if m.split else (tensor,)
        if m.interleaved:
            parts = (_regroup(tensor, 3, m.interleaved),)  # (3, heads) -> (heads, 3)
        for key, part in zip(m.hf, parts, strict=True):
            out[key] = part.T if m.transpose else part
    for key, pieces in stacked.items():
        out[key] = torch.cat([t for _, t in sorted(pieces, key=lambda piece: piece[0])])
    return out


def check_structure(model: CompiledModel, expected: CompiledModel, layout: Layout, where: str) -> None:
    """Refuse a model that differs from the family's layout anywhere it matters: nodes, wiring,
    arguments, tensor names and shapes, tying, output. The first difference is the message."""

    def fail(problem: str) -> HFExportError:
        return HFExportError(f"{where}: {problem}, unlike the {layout.title} layout", HELP_LAYOUTS)

    for path in expected.order:
        want, have = expected.nodes[path], model.nodes.get(path)
        if have is None:
            raise fail(f"there is no node {path!r} ({want.block})")
        if have.block != want.block:
            raise fail(f"node {path!r} is {have.block}, not {want.block}")
        if have.inputs != want.inputs:
            raise fail(f"node {path!r} reads {', '.join(have.inputs)}, not {', '.join(want.inputs)}")
        for name, value in want.args.items():
            if name not in IGNORED_ARGS and have.args.get(name) != value:
                raise fail(f"node {path!r} has {name}={have.args.get(name)!r}, not {value!r}")
    extra = [p for p in model.order if p not in expected.nodes]
    if extra:
        raise fail(f"node {extra[0]!r} ({model.nodes[extra[0]].block}) has no counterpart")
    if model.tied != expected.tied:
        raise fail(f"the tied tensors are {model.tied or 'none'}, not {expected.tied or 'none'}")
    if list(model.outputs.values()) != list(expected.outputs.values()):
        raise fail(f"the outputs are {', '.join(model.outputs.values())}, not the head's logits alone")
    have_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, tensor in expected.state_dict().items():
        if have_shapes.get(key) != tuple(tensor.shape):
            raise fail(f"tensor {key!r} has shape {have_shapes.get(key)}, not {tuple(tensor.shape)}")
    extra = [k for k in have_shapes if k not in expected.state_dict()]
    if extra:
        raise fail(f"tensor {extra[0]!r} has no counterpart")
