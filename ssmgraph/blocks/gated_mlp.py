"""Gated MLP with an SSM on its value branch (block ``mix.gated_mlp``).

A "Gated MLP" hybrid combines SSM components with an MLP architecture. We take the definition the Mamba paper draws in its Figure 3 (§3.4): a
gated MLP (GLU family, ``W_o(σ(W_g x) ⊙ W_v x)``; with σ = SiLU, SwiGLU) whose main (value)
branch carries a sequence-mixing SSM. Mamba is this block with a causal conv and a
selective SSM on the value branch; here the value branch carries a linear time-invariant
SSM — S4D (default) or S4 — so the block is convolutional in training and recurrent in
decoding::

    v, g = split(W_in x)                 W_in: Linear(D → 2·E·D), E = expand (default 2)
    h = SSM(v) + D ⊙ v                   S4D kernel (ZOH, S4D-Lin init) or S4 DPLR kernel (LegS)
    y = W_out(h ⊙ silu(g))               W_out: Linear(E·D → D)

The projections have no bias by default (as Mamba's). It is causal, with ``step``.
Permutation spaces: ``inner``, the E·D channels (rows of both in_proj halves, the SSM's
features, D, out_proj's columns), and ``modes``, the SSM's stored modes. Input features:
in_proj's columns; output features: out_proj's rows (and bias).

References: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
2023 (arXiv 2312.00752), §3.4 and Figure 3 (gated MLP → H3 → Mamba); Shazeer, "GLU Variants
Improve Transformer", 2020 (SwiGLU); Mehta et al., "Long Range Language Modeling via Gated
State Spaces", ICLR 2023 (GSS, the same idea with a DSS kernel and a bottleneck). The SSMs
are :class:`ssmgraph.blocks.s4d.DiagSSM` and :class:`ssmgraph.blocks.s4.DPLRSSM`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmgraph.blocks.conv_ssm import ssm_feature_axes, ssm_mode_space
from ssmgraph.blocks.s4 import DPLRSSM
from ssmgraph.blocks.s4d import DiagSSM
from ssmgraph.blocks.ssm_params import check_ssm_args, ssm_params
from ssmgraph.ops.discretize import DISCRETIZATIONS
from ssmgraph.ops.final_state import mask_lengths
from ssmgraph.ops.hippo import DIAG_INITS
from ssmgraph.ops.linear import Linear
from ssmgraph.ops.precision import ssm_dtype
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import (
    INPUT_SPACE,
    OUTPUT_SPACE,
    BlockSpec,
    Param,
    PermAxis,
    PermSpace,
    TensorType,
    rows_of,
    same_as_input,
)


class GatedMLPSSM(nn.Module):
    """``W_out((SSM(v) + D v) ⊙ silu(g))`` with ``(v, g) = W_in x`` (mixer protocol)."""

    def __init__(
        self,
        d_model: int,
        expand: int = 2,
        ssm: str = "s4d",
        d_state: int = 64,
        init: str = "lin",
        disc: str = "zoh",
        l_max: int = 1024,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        ssm_lr: float = 1e-3,
        bias: bool = False,
    ) -> None:
        super().__init__()
        inner = expand * d_model
        self.in_proj = Linear(d_model, 2 * inner, bias=bias)
        common = {"d_state": d_state, "channels": 1, "dt_min": dt_min, "dt_max": dt_max, "ssm_lr": ssm_lr}
        if ssm == "s4d":
            self.ssm = DiagSSM(inner, init=init, disc=disc, **common)
        else:
            self.ssm = DPLRSSM(inner, measure="legs", l_max=l_max, **common)
        self.D = nn.Parameter(torch.randn(inner))
        self.out_proj = Linear(inner, d_model, bias=bias)

    def forward(
        self,
        x: Tensor,
        *,
        state: Tensor | None = None,
        return_state: bool = False,
        mask: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        lengths = mask_lengths(mask, x.shape[1])
        v, g = self.in_proj(x).chunk(2, dim=-1)
        dtype = ssm_dtype(self.ssm)
        with torch.autocast(device_type=x.device.type, enabled=False):
            u = v.to(dtype).transpose(1, 2)  # (B, E·D, L)
            h, new_state = self.ssm(u, state, lengths, return_state)
            h = (h.squeeze(1) + self.D.to(dtype).unsqueeze(-1) * u).transpose(1, 2)
        y = self.out_proj(h.to(g.dtype) * F.silu(g))
        return (y, new_state) if return_state else y

    def init_state(self, batch: int, *, device=None, dtype=None) -> Tensor:
        return self.ssm.init_state((batch,), device=device, dtype=dtype)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        v, g = self.in_proj(x_t).chunk(2, dim=-1)
        dtype = ssm_dtype(self.ssm)
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            u = v.to(dtype)
            h, state = self.ssm.step(u, state)
            h = h.squeeze(1) + self.D.to(dtype) * u
        return self.out_proj(h.to(g.dtype) * F.silu(g)), state


def _shape(in_types: list[TensorType], **args: Any) -> TensorType:
    check_ssm_args(args["d_state"], args["dt_min"], args["dt_max"])
    return same_as_input(in_types)


def _build(in_types: list[TensorType], **args: Any) -> GatedMLPSSM:
    return GatedMLPSSM(in_types[0].dim, **args)


def _spaces(in_types: list[TensorType], *, expand: int, ssm: str, d_state: int, bias: bool, **_: Any) -> tuple[PermSpace, ...]:
    dplr = ssm == "s4"
    halves = ("in_proj.weight", "in_proj.bias") if bias else ("in_proj.weight",)
    axes = (
        *(PermAxis(p, 0, chunks=2) for p in halves),
        *ssm_feature_axes("ssm.", dplr=dplr),
        PermAxis("D", 0),
        PermAxis("out_proj.weight", 1),
    )
    dim = in_types[0].dim
    writes = rows_of("out_proj", bias)
    return (
        PermSpace("inner", expand * dim, axes, "inner channels"),
        ssm_mode_space("ssm.", d_state, dplr=dplr),
        PermSpace(INPUT_SPACE, dim, (PermAxis("in_proj.weight", 1),)),
        PermSpace(OUTPUT_SPACE, dim, writes),
    )


_SSM_PARAMS = ssm_params(
    docs={
        "d_state": "state size N of the SSM (N/2 complex modes stored)",
        "dt_max": "largest initial step size Δ",
        "ssm_lr": "learning rate of the SSM parameters (no weight decay); 0 freezes them",
    }
)

GATED_MLP = BlockSpec(
    name="mix.gated_mlp",
    examples=({"d_state": 8}, {"d_state": 8, "ssm": "s4"}),
    role="mix",
    doc="gated MLP with an LTI SSM (S4D or S4) on the value branch: W_out((SSM(v)+Dv) ⊙ silu(g))",
    reference="Gu & Dao 2023, Mamba, §3.4 / Fig. 3 (gated MLP with an SSM on the main branch); "
    "Shazeer 2020, GLU Variants Improve Transformer",
    params=(
        Param("expand", int, 2, "inner width E·dim of the value and gate branches", min=1),
        Param("ssm", str, "s4d", "SSM on the value branch", choices=("s4d", "s4")),
        _SSM_PARAMS.d_state,
        Param("init", str, "lin", "S4D initialisation of A (ssm: s4d)", choices=DIAG_INITS),
        Param("disc", str, "zoh", "S4D discretisation (ssm: s4d; S4 is bilinear)", choices=DISCRETIZATIONS),
        Param("l_max", int, 1024, "kernel length of the S4 SSM (ssm: s4)", min=1),
        _SSM_PARAMS.dt_min,
        _SSM_PARAMS.dt_max,
        _SSM_PARAMS.ssm_lr,
        Param("bias", bool, False, "biases on the input and output projections"),
    ),
    factory=_build,
    shape=_shape,
    perm_spaces=_spaces,
    causal=True,
    bidirectional=False,
    step=True,
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [GATED_MLP]
