"""Which parameters are several tensors stacked by rows, so that a merge computes its
per-tensor statistics (TIES's top-k threshold, SLERP's angle, DARE's L1 norm) over each part,
as mergekit does over each Hugging Face tensor.

The rule, in this one place: a parameter has parts exactly where the model's Hugging Face
layout — the one ``ssmgraph export hf`` writes — stores it as several tensors. Today that is
Llama's attention ``qkv``: q_proj, k_proj, v_proj rows (heads·head_dim, kv_heads·head_dim,
kv_heads·head_dim), in models imported from Llama or built from blueprints/llama.yaml. GPT-2
stores ``c_attn`` as one tensor, so a GPT-2 model's ``qkv`` is merged whole, as is Phi-3's
(``qkv_proj``: one tensor, ``TensorMap.hf`` has one name) and GPT-NeoX's (``query_key_value``:
one tensor whose rows are interleaved per head; ssmgraph's rows are the same values reordered, and
the per-tensor statistics do not depend on the order), and so is every parameter of a model
that no Hugging Face family reads. The converse — several ssmgraph parameters that are one
Hugging Face tensor (Phi-3's ``w_gate`` and ``w_up`` are the rows of ``gate_up_proj``) — is
:class:`~ssmgraph.merge.weights.Joined`: those parameters are stacked and merged as one tensor,
with mergekit's statistics over the whole ``gate_up_proj``.
"""

from __future__ import annotations

from ssmgraph.graph.model import CompiledModel
from ssmgraph.interop.errors import HFExportError
from ssmgraph.interop.hf import layout_of
from ssmgraph.interop.hf.layout import Layout, TensorMap
from ssmgraph.merge.weights import Joined


def fused_parts(model: CompiledModel) -> dict[str, tuple[int, ...]]:
    """``{state-dict key: row counts of its parts}`` for the parameters of ``model`` that its
    Hugging Face layout stores as several tensors; empty when there are none."""
    layout = _layout(model)
    return {} if layout is None else _fused(layout.tensor_maps(), _rows(model))


def merge_parts(model: CompiledModel) -> dict[str, tuple[int, ...] | Joined]:
    """:func:`fused_parts`, and ``{key: Joined(keys)}`` for the parameters that the layout stores
    as the rows of one tensor (in row order): the ``parts`` of :func:`ssmgraph.merge.weights.tensorwise`."""
    layout = _layout(model)
    if layout is None:
        return {}
    maps, rows = layout.tensor_maps(), _rows(model)
    found: dict[str, tuple[int, ...] | Joined] = dict(_fused(maps, rows))
    sources: dict[str, list[tuple[int, str]]] = {}
    for m in maps:
        if m.rows is not None and rows.get(m.ssm) == m.rows[1] - m.rows[0]:
            sources.setdefault(m.hf[0], []).append((m.rows[0], m.ssm))
    for pieces in sources.values():
        if len(pieces) > 1:
            joined = Joined(tuple(key for _, key in sorted(pieces)))
            found.update(dict.fromkeys(joined.keys, joined))
    return found


def _fused(maps: list[TensorMap], rows: dict[str, int | None]) -> dict[str, tuple[int, ...]]:
    """The maps of one parameter from several Hugging Face tensors, whose rows add up (a layer sized otherwise stays whole)."""
    return {m.ssm: m.split for m in maps if len(m.hf) > 1 and rows.get(m.ssm) == sum(m.split)}


def _rows(model: CompiledModel) -> dict[str, int | None]:
    """State-dict key -> its tensor's row count (None for a scalar)."""
    return {key: tensor.shape[0] if tensor.dim() else None for key, tensor in model.state_dict().items()}


def _layout(model: CompiledModel) -> Layout | None:
    """The layout export would write ``model`` with, or None when no family reads it."""
    try:
        return layout_of(model, "the merged model")
    except HFExportError:  # no Hugging Face tensors to follow
        return None
