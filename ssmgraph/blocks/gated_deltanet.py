"""``mix.gated_deltanet``: Gated DeltaNet, the delta rule with a data-dependent decay.

Yang, Kautz & Hatamizadeh 2025, "Gated Delta Networks: Improving Mamba2 with Delta Rule"
(§3.1 eq. 10, §3.3 the chunked form, §3.4 the block), following fla's ``GatedDeltaNet``
layer (``fla/layers/gated_deltanet.py``: names, A_log / dt_bias init, gated output norm).
With D = dim, H heads of d_k = head_dim (null: D/H) and d_v = int(expand_v·d_k)::

    q, k, v = silu(conv(q_proj(x))), silu(conv(k_proj(x))), silu(conv(v_proj(x)))   conv only with short_conv
    q, k    = q / ‖q‖, k / ‖k‖                                    per head (eps 1e-6)
    β_t     = sigmoid(b_proj(x_t))                                 one per head (×2 with allow_neg_eigval)
    α_t     = exp(−exp(A_log) · softplus(a_proj(x_t) + dt_bias))  one per head, Mamba-2's decay
    S_t     = S_{t-1} (α_t (I − β_t k_t k_t^T)) + β_t v_t k_t^T    the paper's V×K state
    o_t     = S_t (d_k^-1/2 q_t)
    y_t     = o_proj(RMSNorm_head(o_t) ⊙ silu(g_proj(x_t)))        (without output_gate: RMSNorm_head(o_t))

Initialisation as fla: A = exp(A_log) ~ U(0, 16); dt_bias = softplus⁻¹(dt), dt = exp(U[log
0.001, log 0.1]) clamped to ≥ 1e-4; both fp32, no weight decay. The rest keeps PyTorch's
defaults. Training runs :func:`ssmgraph.ops.delta_rule.chunk_delta_rule` with the decays
(all factors exp(g_t − g_s) ≤ 1), decoding its step, in fp32 at least.

State, masks and permutation spaces as ``mix.deltanet`` (:mod:`ssmgraph.blocks.deltanet`);
a_proj's rows, A_log and dt_bias belong to the ``heads`` space too. At padded positions
β = 0 and α = 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmgraph.blocks.deltanet import DELTA_PARAMS, DeltaNet
from ssmgraph.blocks.linear_attention_parts import HEADS, check_heads, head_spaces
from ssmgraph.blocks.optim_hints import mark_optim
from ssmgraph.ops.discretize import dt_bias_init
from ssmgraph.ops.linear import Linear
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import BlockSpec, Param, PermSpace, ShapeError, TensorType, same_as_input

DT_MIN, DT_MAX, DT_FLOOR, A_MAX = 1e-3, 1e-1, 1e-4, 16.0
"""fla's hard-coded initial ranges of dt and A."""


def _widths(dim: int, heads: int, head_dim: int | None, expand_v: float) -> tuple[int, int]:
    """(key width, value width) = (H·d_k, H·int(expand_v·d_k))."""
    dk = dim // heads if head_dim is None else head_dim
    return heads * dk, heads * int(expand_v * dk)


class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet over B×L×D (fla's ``GatedDeltaNet`` in plain PyTorch, one value head per key head)."""

    def __init__(
        self,
        dim: int,
        *,
        heads: int = 4,
        head_dim: int | None = None,
        expand_v: float = 2.0,
        allow_neg_eigval: bool = False,
        output_gate: bool = True,
        short_conv: bool = True,
        conv_size: int = 4,
        conv_bias: bool = False,
        norm_eps: float = 1e-5,
        chunk_size: int = 64,
    ):
        key_dim, value_dim = _widths(dim, heads, head_dim, expand_v)
        super().__init__(
            dim,
            heads=heads,
            qk_activation="silu",
            allow_neg_eigval=allow_neg_eigval,
            output_gate=output_gate,
            short_conv=short_conv,
            conv_size=conv_size,
            conv_bias=conv_bias,
            norm_eps=norm_eps,
            chunk_size=chunk_size,
            key_dim=key_dim,
            value_dim=value_dim,
        )
        self.a_proj = Linear(dim, heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(heads, dtype=torch.float32))
        self.dt_bias = nn.Parameter(torch.empty(heads, dtype=torch.float32))
        for p in (self.A_log, self.dt_bias):
            mark_optim(p, weight_decay=0.0)
            p._no_weight_decay = True  # type: ignore[attr-defined]  # fla's flag, for ported training code
        self._init_decay()

    def _init_decay(self) -> None:
        with torch.no_grad():
            self.A_log.copy_(torch.log(torch.empty_like(self.A_log).uniform_(0, A_MAX)))
            bias = self.dt_bias
            bias.copy_(dt_bias_init(len(bias), DT_MIN, DT_MAX, DT_FLOOR, dtype=bias.dtype, device=bias.device))

    def _log_alpha(self, x: Tensor, cdt: torch.dtype) -> Tensor:
        return -torch.exp(self.A_log.to(cdt)) * F.softplus(self.a_proj(x).to(cdt) + self.dt_bias.to(cdt))


def _shape(in_types: Sequence[TensorType], *, heads: int, head_dim: int | None, expand_v: float, **_: Any) -> TensorType:
    out = same_as_input(in_types)
    if head_dim is None and out.dim < heads:
        raise ShapeError(f"mix.gated_deltanet: dim {out.dim} is smaller than heads {heads} (set head_dim)")
    check_heads("mix.gated_deltanet", heads, *_widths(out.dim, heads, head_dim, expand_v))
    return out


def _build(in_types: Sequence[TensorType], **args: Any) -> GatedDeltaNet:
    return GatedDeltaNet(in_types[0].dim, **args)


def _spaces(in_types: Sequence[TensorType], **args: Any) -> tuple[PermSpace, ...]:
    dim, heads = in_types[0].dim, args["heads"]
    key_dim, value_dim = _widths(dim, heads, args["head_dim"], args["expand_v"])
    return tuple(
        head_spaces(
            heads=heads,
            key_dim=key_dim,
            value_dim=value_dim,
            dim=dim,
            short_conv=args["short_conv"],
            conv_bias=args["conv_bias"],
            output_gate=args["output_gate"],
            head_entries=("b_proj.weight", "a_proj.weight", "A_log", "dt_bias"),
            inputs=("b_proj.weight", "a_proj.weight"),
        )
    )


GATED_DELTANET = BlockSpec(
    name="mix.gated_deltanet",
    examples=(
        {},
        {
            "heads": 2,
            "head_dim": 3,
            "expand_v": 1,
            "output_gate": False,
            "allow_neg_eigval": True,
            "short_conv": False,
            "chunk_size": 4,
        },
    ),
    role="mix",
    doc="Gated DeltaNet: the delta rule with a Mamba-2-style per-head decay α_t, gated output norm, chunked WY form.",
    params=(
        HEADS,
        Param("head_dim", int, None, "key features per head d_k (null = dim / heads)", min=1, nullable=True),
        Param("expand_v", (int, float), 2.0, "value features per head d_v = int(expand_v · d_k)", min=0),
        Param("output_gate", bool, True, "multiply the normed output by silu(g_proj(x)) (fla's use_gate)"),
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
        "Yang, Kautz & Hatamizadeh 2025, Gated Delta Networks: Improving Mamba2 with Delta Rule; "
        "fla-org/flash-linear-attention fla/layers/gated_deltanet.py"
    ),
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [GATED_DELTANET]
