"""``mix.deltanet``: DeltaNet, linear attention with the delta (Widrow-Hoff) update rule.

Schlag, Irie & Schmidhuber 2021, "Linear Transformers Are Secretly Fast Weight Programmers"
(the delta rule); Yang, Wang, Zhang, Shen & Kim 2024, "Parallelizing Linear Transformers with
the Delta Rule over Sequence Length" (the chunked WY form, the layer design). Follows fla's
``DeltaNet`` layer (``fla/layers/delta_net.py``: names, short convolutions, L2-normalised
q and k, sigmoid β). With D = dim, K = int(expand_k·D), V = int(expand_v·D), H heads of
d_k = K/H and d_v = V/H::

    q, k = φ(conv(q_proj(x))), φ(conv(k_proj(x)))    φ = qk_activation; conv only with short_conv
    v    = silu(conv(v_proj(x)))
    q, k = q / ‖q‖, k / ‖k‖                            per head (fla's l2norm, eps 1e-6)
    β_t  = sigmoid(b_proj(x_t))                        one per head (×2 with allow_neg_eigval)
    S_t  = S_{t-1} (I − β_t k_t k_t^T) + β_t v_t k_t^T    the papers' V×K state
    o_t  = S_t (d_k^-1/2 q_t)
    y_t  = o_proj(RMSNorm_head(o_t))                   (⊙ silu(g_proj(x_t)) with output_gate)

The state is kept as fla keeps it, transposed (K×V: S_t = (I − β k k^T) S_{t-1} + β k v^T);
:mod:`ssmgraph.ops.delta_rule` has the chunked WY/UT form used in training and the step used
in decoding, in fp32 at least. Linear layers keep PyTorch's default initialisation.

State ``(conv_states, S)`` (:mod:`~ssmgraph.blocks.linear_attention_parts`). With ``mask``
(right padding) β = 0 at padded positions, which leaves S unchanged; outputs there are 0.

Permutation spaces: ``heads``; ``key`` (the d_k features of a head, the same in every head:
q/k rows and their convs; φ is elementwise and the L2 norm ignores the order); ``value``
(v/g rows, the v conv, o_norm's weight, o_proj's columns). Input features: the columns of
every projection; output features: o_proj's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmgraph.blocks.linear_attention_parts import (
    CHUNK_PARAM,
    HEADS,
    NORM_EPS,
    LinearAttentionState,
    QKVMixer,
    check_heads,
    conv_params,
    head_spaces,
    l2norm,
)
from ssmgraph.ops.delta_rule import chunk_delta_rule, delta_rule_step
from ssmgraph.ops.linear import Linear
from ssmgraph.ops.precision import compute_dtype
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import BlockSpec, Param, PermSpace, TensorType, same_as_input

ACTIVATIONS = {"silu": F.silu, "relu": F.relu, "elu": lambda t: F.elu(t) + 1.0, "identity": lambda t: t}
"""φ of q and k; ``elu`` is fla's elu_p1, elu(x) + 1."""


class DeltaNet(QKVMixer):
    """DeltaNet over B×L×D (fla's ``DeltaNet`` in plain PyTorch); Gated DeltaNet extends it."""

    def __init__(
        self,
        dim: int,
        *,
        heads: int = 4,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        qk_activation: str = "silu",
        allow_neg_eigval: bool = False,
        output_gate: bool = False,
        short_conv: bool = True,
        conv_size: int = 4,
        conv_bias: bool = False,
        norm_eps: float = 1e-5,
        chunk_size: int = 64,
        key_dim: int | None = None,
        value_dim: int | None = None,
    ):
        """``key_dim``/``value_dim``: widths given directly (Gated DeltaNet), else from the expand factors."""
        if qk_activation not in ACTIVATIONS:
            raise ValueError(f"qk_activation must be one of {', '.join(ACTIVATIONS)}, got {qk_activation!r}")
        key_dim = int(expand_k * dim) if key_dim is None else key_dim
        value_dim = int(expand_v * dim) if value_dim is None else value_dim
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
        self.b_proj = Linear(dim, heads, bias=False)
        self.qk_activation, self.allow_neg_eigval, self.chunk_size = qk_activation, allow_neg_eigval, chunk_size
        self.scale = self.head_k_dim**-0.5

    def _log_alpha(self, x: Tensor, cdt: torch.dtype) -> Tensor | None:
        """log α per head (B, ..., H); None: no decay (DeltaNet)."""
        return None

    def _gates(self, x: Tensor, cdt: torch.dtype) -> tuple[Tensor, Tensor | None]:
        beta = torch.sigmoid(self.b_proj(x).to(cdt))
        return (2.0 * beta if self.allow_neg_eigval else beta), self._log_alpha(x, cdt)

    def _features(self, qkv: list[Tensor], cdt: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """(q, k, v) (…, H, d) in the compute dtype: φ and the L2 norm on q and k, SiLU on v."""
        phi = ACTIVATIONS[self.qk_activation]
        q, k, v = (t.unflatten(-1, (self.heads, -1)) for t in qkv)
        return l2norm(phi(q).to(cdt)), l2norm(phi(k).to(cdt)), F.silu(v).to(cdt)

    def forward(
        self, x: Tensor, *, state: LinearAttentionState | None = None, return_state: bool = False, mask: Tensor | None = None
    ) -> Tensor | tuple[Tensor, LinearAttentionState]:
        conv_states, s0 = (None, None) if state is None else state
        qkv, conv_states = self._qkv(x, conv_states, mask)
        cdt = compute_dtype(x.dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q, k, v = (t.transpose(1, 2) for t in self._features(qkv, cdt))  # (B, H, L, d)
            beta, log_alpha = (None if t is None else t.transpose(1, 2) for t in self._gates(x, cdt))
            if mask is not None:  # padding: β = 0 (and α = 1) leave S unchanged
                keep = mask[:, None, :].to(cdt)
                beta = beta * keep
                log_alpha = None if log_alpha is None else log_alpha * keep
            o, s = chunk_delta_rule(
                q, k, v, beta, scale=self.scale, log_alpha=log_alpha, initial_state=s0, chunk_size=self.chunk_size
            )
        y = self._finish(o.transpose(1, 2), x, mask)
        return (y, (conv_states, s)) if return_state else y

    def step(self, x_t: Tensor, state: LinearAttentionState) -> tuple[Tensor, LinearAttentionState]:
        """One token: x_t (B, D) -> (y_t (B, D), new state); no in-place updates."""
        conv_states, s = state
        qkv, conv_states = self._qkv_step(x_t, conv_states)
        cdt = compute_dtype(x_t.dtype)
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            q, k, v = self._features(qkv, cdt)
            beta, log_alpha = self._gates(x_t, cdt)
            o, s = delta_rule_step(q, k, v, beta, s.to(cdt), scale=self.scale, log_alpha=log_alpha)
        return self._finish(o, x_t), (conv_states, s)


def _shape(in_types: Sequence[TensorType], *, heads: int, expand_k: float, expand_v: float, **_: Any) -> TensorType:
    out = same_as_input(in_types)
    check_heads("mix.deltanet", heads, int(expand_k * out.dim), int(expand_v * out.dim))
    return out


def _build(in_types: Sequence[TensorType], **args: Any) -> DeltaNet:
    return DeltaNet(in_types[0].dim, **args)


def _spaces(in_types: Sequence[TensorType], **args: Any) -> tuple[PermSpace, ...]:
    dim = in_types[0].dim
    return tuple(
        head_spaces(
            heads=args["heads"],
            key_dim=int(args["expand_k"] * dim),
            value_dim=int(args["expand_v"] * dim),
            dim=dim,
            short_conv=args["short_conv"],
            conv_bias=args["conv_bias"],
            output_gate=args["output_gate"],
            head_entries=("b_proj.weight",),
            inputs=("b_proj.weight",),
        )
    )


DELTA_PARAMS = (
    Param("allow_neg_eigval", bool, False, "β ∈ (0, 2) instead of (0, 1): I − β k kᵀ may have a negative eigenvalue"),
    *conv_params(True),
    NORM_EPS,
    CHUNK_PARAM,
)

DELTANET = BlockSpec(
    name="mix.deltanet",
    examples=(
        {},
        {"heads": 2, "output_gate": True, "allow_neg_eigval": True, "conv_bias": True, "chunk_size": 4, "qk_activation": "elu"},
    ),
    role="mix",
    doc="DeltaNet: linear attention whose state is updated by the delta rule (L2-normalised keys, sigmoid β), chunked WY form.",
    params=(
        HEADS,
        Param("expand_k", (int, float), 1.0, "key width K = int(expand_k · dim)", min=0),
        Param("expand_v", (int, float), 1.0, "value width V = int(expand_v · dim)", min=0),
        Param("qk_activation", str, "silu", "φ on q and k before the L2 norm (elu: elu + 1)", choices=tuple(ACTIVATIONS)),
        Param("output_gate", bool, False, "multiply the normed output by silu(g_proj(x)) (fla's use_gate)"),
        *DELTA_PARAMS,
    ),
    factory=_build,
    shape=_shape,
    perm_spaces=_spaces,
    causal=True,
    bidirectional=False,
    step=True,
    pointwise=False,
    reference=(
        "Schlag, Irie & Schmidhuber 2021, Linear Transformers Are Secretly Fast Weight Programmers; Yang, Wang, Zhang, "
        "Shen & Kim 2024, Parallelizing Linear Transformers with the Delta Rule over Sequence Length; "
        "fla-org/flash-linear-attention fla/layers/delta_net.py"
    ),
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [DELTANET]
