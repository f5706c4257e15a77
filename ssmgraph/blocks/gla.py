"""``mix.gla``: Gated Linear Attention.

Yang, Wang, Shen, Panda & Kim 2024, "Gated Linear Attention Transformers with
Hardware-Efficient Training" (§4, eq. 3 and §4.4), following fla's ``GatedLinearAttention``
layer (``fla/layers/gla.py``: names, low-rank gate, ``gate_logit_normalizer``, fused
norm-and-swish output gate). With D = dim, K = int(expand_k·D), V = int(expand_v·D) split
into H heads of d_k = K/H and d_v = V/H::

    q, k, v = q_proj(x), k_proj(x), v_proj(x)          (short causal convs + SiLU with short_conv)
    log α_t = logsigmoid(gk_proj(x_t)) / gate_logit_normalizer     gk_proj: D → r → K (low rank r)
              (clamped from below at clamp_min when set)
    S_t = diag(α_t) S_{t-1} + k_t^T v_t               per head, S_t ∈ R^{d_k×d_v}
    o_t = (d_k^-1/2 q_t) S_t
    y_t = o_proj(RMSNorm_head(o_t) ⊙ swish(g_proj(x_t)))   (without output_gate: RMSNorm_head(o_t))

The paper normalises with a LayerNorm per head (group norm); fla, and we, use an RMS norm per
head whose weight (d_v) is shared by the heads. Training runs the stable chunked form
:func:`ssmgraph.ops.linear_attention.chunk_gla` (log-cumulative decays with secondary
chunking, in fp32 at least); ``step`` runs the recurrence above. Linear layers keep PyTorch's
default initialisation (fla re-initialises at the model level).

State ``(conv_states, S)`` (:mod:`~ssmgraph.blocks.linear_attention_parts`). With ``mask``
(right padding) the keys and log-decays at padded positions are zero, so S passes padding
unchanged; outputs at padded positions are 0.

Permutation spaces: ``heads``; ``key`` (the d_k features of a head, the same in every head:
rows of q_proj, k_proj, gk_proj's second layer and the q/k convs); ``value`` (rows of
v_proj, g_proj and the v conv, o_norm's weight, o_proj's columns); ``gate_rank`` (the r
entries between the two gk_proj layers). Input features: the columns of every projection;
output features: o_proj's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmgraph.blocks.linear_attention_parts import (
    CHUNK_PARAM,
    HEADS,
    NORM_EPS,
    LinearAttentionState,
    QKVMixer,
    check_heads,
    conv_params,
    head_spaces,
    split_heads,
)
from ssmgraph.ops.linear import Linear
from ssmgraph.ops.linear_attention import chunk_gla, gla_step
from ssmgraph.ops.precision import compute_dtype
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import BlockSpec, Param, PermAxis, PermSpace, ShapeError, TensorType, same_as_input


class GatedLinearAttention(QKVMixer):
    """GLA over B×L×D (fla's ``GatedLinearAttention`` in plain PyTorch)."""

    def __init__(
        self,
        dim: int,
        *,
        heads: int = 4,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_low_rank: int = 16,
        gate_logit_normalizer: float = 16.0,
        clamp_min: float | None = None,
        output_gate: bool = True,
        short_conv: bool = False,
        conv_size: int = 4,
        conv_bias: bool = False,
        norm_eps: float = 1e-5,
        chunk_size: int = 64,
    ):
        key_dim, value_dim = int(expand_k * dim), int(expand_v * dim)
        super().__init__(
            dim,
            key_dim,
            value_dim,
            heads,
            short_conv=short_conv,
            conv_size=conv_size,
            conv_bias=conv_bias,
            output_gate=output_gate,
            norm_eps=norm_eps,
        )
        self.gk_proj = nn.Sequential(Linear(dim, gate_low_rank, bias=False), Linear(gate_low_rank, key_dim, bias=True))
        self.gate_logit_normalizer, self.clamp_min, self.chunk_size = gate_logit_normalizer, clamp_min, chunk_size
        self.scale = self.head_k_dim**-0.5

    def _log_decay(self, x: Tensor, cdt: torch.dtype) -> Tensor:
        log_a = F.logsigmoid(self.gk_proj(x).to(cdt)) / self.gate_logit_normalizer
        return log_a if self.clamp_min is None else log_a.clamp_min(self.clamp_min)

    def _features(self, qkv: list[Tensor]) -> list[Tensor]:
        return [F.silu(t) for t in qkv] if self.short_conv else qkv

    def forward(
        self, x: Tensor, *, state: LinearAttentionState | None = None, return_state: bool = False, mask: Tensor | None = None
    ) -> Tensor | tuple[Tensor, LinearAttentionState]:
        conv_states, s0 = (None, None) if state is None else state
        qkv, conv_states = self._qkv(x, conv_states, mask)
        cdt = compute_dtype(x.dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q, k, v = (split_heads(t.to(cdt), self.heads) for t in self._features(qkv))
            log_a = split_heads(self._log_decay(x, cdt), self.heads)
            if mask is not None:  # padding: k = 0 and α = 1 leave S unchanged
                keep = mask[:, None, :, None].to(cdt)
                k, log_a = k * keep, log_a * keep
            o, s = chunk_gla(q, k, v, log_a, scale=self.scale, initial_state=s0, chunk_size=self.chunk_size)
        y = self._finish(o.transpose(1, 2), x, mask)
        return (y, (conv_states, s)) if return_state else y

    def step(self, x_t: Tensor, state: LinearAttentionState) -> tuple[Tensor, LinearAttentionState]:
        """One token: x_t (B, D) -> (y_t (B, D), new state); no in-place updates."""
        conv_states, s = state
        qkv, conv_states = self._qkv_step(x_t, conv_states)
        cdt = compute_dtype(x_t.dtype)
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            q, k, v = (t.to(cdt).unflatten(-1, (self.heads, -1)) for t in self._features(qkv))
            log_a = self._log_decay(x_t, cdt).unflatten(-1, (self.heads, -1))
            o, s = gla_step(q, k, v, log_a, s.to(cdt), self.scale)
        return self._finish(o, x_t), (conv_states, s)


def _widths(dim: int, args: dict[str, Any]) -> tuple[int, int]:
    return int(args["expand_k"] * dim), int(args["expand_v"] * dim)


def _shape(in_types: Sequence[TensorType], **args: Any) -> TensorType:
    out = same_as_input(in_types)
    check_heads("mix.gla", args["heads"], *_widths(out.dim, args))
    if args["gate_logit_normalizer"] <= 0:
        raise ShapeError(f"mix.gla: gate_logit_normalizer must be above 0, got {args['gate_logit_normalizer']:g}")
    return out


def _build(in_types: Sequence[TensorType], **args: Any) -> GatedLinearAttention:
    return GatedLinearAttention(in_types[0].dim, **args)


def _spaces(in_types: Sequence[TensorType], **args: Any) -> tuple[PermSpace, ...]:
    dim = in_types[0].dim
    key_dim, value_dim = _widths(dim, args)
    spaces = head_spaces(
        heads=args["heads"],
        key_dim=key_dim,
        value_dim=value_dim,
        dim=dim,
        short_conv=args["short_conv"],
        conv_bias=args["conv_bias"],
        output_gate=args["output_gate"],
        key_rows=("gk_proj.1.weight", "gk_proj.1.bias"),
        inputs=("gk_proj.0.weight",),
    )
    rank = (PermAxis("gk_proj.0.weight", 0), PermAxis("gk_proj.1.weight", 1))
    return (*spaces, PermSpace("gate_rank", args["gate_low_rank"], rank, "entries of the low-rank gate projection"))


GLA = BlockSpec(
    name="mix.gla",
    examples=({}, {"heads": 2, "short_conv": True, "conv_bias": True, "clamp_min": -0.05, "output_gate": False, "chunk_size": 4}),
    role="mix",
    doc="Gated Linear Attention: linear attention with a key-wise data-dependent decay (low-rank gate), chunked training.",
    params=(
        HEADS,
        Param("expand_k", (int, float), 0.5, "key width K = int(expand_k · dim)", min=0),
        Param("expand_v", (int, float), 1.0, "value width V = int(expand_v · dim)", min=0),
        Param("gate_low_rank", int, 16, "rank r of the gate projection gk_proj (D → r → K)", min=1),
        Param("gate_logit_normalizer", (int, float), 16.0, "log α = logsigmoid(gate logits) / this (the paper's temperature)"),
        Param("clamp_min", float, None, "lower clamp of log α (null: none)", nullable=True, max=0.0),
        Param("output_gate", bool, True, "multiply the normed output by swish(g_proj(x))"),
        *conv_params(False),
        NORM_EPS,
        CHUNK_PARAM,
    ),
    factory=_build,
    shape=_shape,
    perm_spaces=_spaces,
    causal=True,
    bidirectional=False,
    step=True,
    pointwise=False,
    reference=(
        "Yang, Wang, Shen, Panda & Kim 2024, Gated Linear Attention Transformers with Hardware-Efficient Training; "
        "fla-org/flash-linear-attention fla/layers/gla.py"
    ),
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [GLA]
