"""H3 (Hungry Hungry Hippos): two SSMs and multiplicative gating (block ``mix.h3``).

For input u (B, L, D), with H heads of size d = D/H::

    q, k, v = W_q u, W_k u, W_v u                       (Linear(D → D) with bias)
    k̃ = ShiftSSM(k) + D_k ⊙ k                           (per feature, state size N)
    KV[h, i, j] = k̃[h, i] · v[h, j]                     (per head, d × d)
    Y = DiagSSM(KV) + D ⊙ KV                            (H channels, shared over the d² entries)
    o[h, j] = Σ_i q[h, i] · Y[h, i, j]                   → out_proj (Linear(D → D))

The shift SSM has the shift matrix as A (x_t = [B u_t + (x_{t-1} shifted down)]), a
trainable B initialised to e₁ and C initialised like a Conv1d weight, so its kernel
``k_l = Σ_m B_m C_{m+l}`` is a learnable causal FIR filter of width N. The inner SSM is the
S4D kernel with S4D-Lin init and bilinear discretisation (``inner='s4d'``, H3's default) or
the S4 DPLR kernel with LegS init (``inner='s4'``). With d = 1 the block is
``out_proj(q ⊙ SSM_diag(SSM_shift(k) ⊙ v))``. Output channels are ordered (j, h) — j major —
as in the reference, so reference weights port without a permutation. The block is causal;
``step`` runs the shift register and the diagonal recurrence.

Permutation spaces: ``heads`` (H > 1), whole heads — their q/k/v rows, the shift SSM and
D_k of their features, their inner-SSM feature and D, their out_proj columns; ``qk_dims``
and ``v_dims`` (d > 1), the index i of q and k (with the shift SSM on k) and the index j
of v (with out_proj), one permutation for every head, since the inner SSM is shared over
the d × d entries of a head; ``modes``, the inner SSM's stored modes. The shift SSM's N
taps are ordered by delay, so they are no space. Input features: the columns of the q, k
and v projections; output features: out_proj's rows and bias.

Reference: Fu, Dao, Saab, Thomas, Rudra, Ré, "Hungry Hungry Hippos: Towards Language
Modeling with State Space Models", ICLR 2023 (arXiv 2212.14052). Code: HazyResearch/H3
``src/models/ssm/h3.py``, ``ss_kernel_shift.py``, ``ss_kernel_diag.py``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmgraph.blocks.conv_ssm import ssm_feature_axes, ssm_mode_space
from ssmgraph.blocks.s4 import DPLRSSM
from ssmgraph.blocks.s4d import DiagSSM
from ssmgraph.blocks.ssm_params import check_ssm_args, register_ssm_param, ssm_params
from ssmgraph.ops.fftconv import fft_conv
from ssmgraph.ops.final_state import mask_lengths, right_align
from ssmgraph.ops.linear import Linear
from ssmgraph.ops.precision import compute_dtype, ssm_dtype
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import (
    INPUT_SPACE,
    OUTPUT_SPACE,
    BlockSpec,
    Param,
    PermAxis,
    PermSpace,
    ShapeError,
    TensorType,
    rows_of,
    same_as_input,
)

H3State = tuple[Tensor, Tensor]


def causal_fir(u: Tensor, w: Tensor) -> Tensor:
    """``y_t = Σ_i w[:, i] u_{t-i}`` per channel: ``u (..., D, L)``, ``w (D, W)`` (direct; for short L)."""
    D, L = u.shape[-2], u.shape[-1]
    width = w.shape[-1]
    flat = F.pad(u.reshape(-1, D, L), (width - 1, 0))
    return F.conv1d(flat, w.flip(-1).unsqueeze(1), groups=D).reshape(u.shape)


class ShiftSSM(nn.Module):
    """Per-feature SSM with the shift matrix as A: ``x_t = S x_{t-1} + B u_t``, ``y_t = C·x_t``.

    State ``(..., D, N)`` real; ``B (D, N)`` (e₁ at init, ``ssm_lr``, no weight decay) and
    ``C (D, N)`` (Conv1d-style kaiming-uniform init).
    """

    def __init__(self, d_model: int, d_state: int, ssm_lr: float) -> None:
        super().__init__()
        self.D, self.N = d_model, d_state
        dtype = torch.get_default_dtype()
        B = torch.zeros(d_model, d_state, dtype=dtype)
        B[:, 0] = 1.0
        register_ssm_param(self, "B", B, ssm_lr)
        C = torch.empty(d_model, 1, d_state, dtype=dtype)
        nn.init.kaiming_uniform_(C, a=math.sqrt(5))
        self.C = nn.Parameter(C[:, 0].contiguous())

    def _windows(self) -> Tensor:
        """``win[:, s, m] = C[:, s + m]`` (zero past N), s = 0..N."""
        return F.pad(self.C, (0, self.N)).unfold(-1, self.N, 1)

    def kernel(self) -> Tensor:
        """``k (D, N)`` with ``k_l = C S^l B = Σ_m B_m C_{m+l}``."""
        return torch.einsum("dlm,dm->dl", self._windows()[:, : self.N], self.B)

    def forward(
        self,
        u: Tensor,
        x0: Tensor | None = None,
        lengths: Tensor | None = None,
        return_state: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``u (B, ..., D, L)`` → ``(y, state after the last valid token or None)``."""
        L, N = u.shape[-1], self.N
        y = fft_conv(u, self.kernel())  # FFT, as the reference (CPU depthwise conv1d backward is very slow)
        if x0 is not None:  # C S^(t+1) x0 = Σ_m C_{m+t+1} x0_m, nonzero for t < N-1
            resp = torch.einsum("dtm,...dm->...dt", self._windows()[:, 1:N], x0)[..., :L]
            y = y + F.pad(resp, (0, L - resp.shape[-1]))
        state = None
        if return_state:
            # x[j] = Σ_{i<=j} B[j-i] u_{len-1-i} + x0[j-len] (j >= len)
            r = right_align(u, lengths).flip(-1)[..., :N]
            state = causal_fir(F.pad(r, (0, N - r.shape[-1])), self.B)
            if x0 is not None:
                n = torch.full((u.shape[0],), L, device=u.device) if lengths is None else lengths
                idx = torch.arange(N, device=u.device) - n.view(-1, *([1] * (x0.dim() - 1)))
                shifted = torch.gather(x0, -1, idx.clamp(min=0).expand(x0.shape))
                state = state + torch.where(idx >= 0, shifted, torch.zeros_like(shifted))
        return y, state

    def init_state(self, batch_shape: tuple[int, ...], device=None, dtype=None) -> Tensor:
        dtype = compute_dtype(dtype or self.C.dtype)  # never below fp32
        return torch.zeros(*batch_shape, self.D, self.N, dtype=dtype, device=device or self.C.device)

    def step(self, u: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.pad(x, (1, -1)) + self.B * u.unsqueeze(-1)
        return (self.C * x).sum(-1), x


class H3Block(nn.Module):
    """H3 mixer (mixer protocol); state = (shift state (B, D, N), inner state (B, d, d, H, N/2))."""

    def __init__(
        self,
        d_model: int,
        heads: int,
        d_state: int = 64,
        inner: str = "s4d",
        l_max: int = 1024,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        ssm_lr: float = 1e-3,
    ) -> None:
        super().__init__()
        self.dim, self.heads, self.head_dim = d_model, heads, d_model // heads
        self.q_proj = Linear(d_model, d_model)
        self.k_proj = Linear(d_model, d_model)
        self.v_proj = Linear(d_model, d_model)
        self.shift = ShiftSSM(d_model, d_state, ssm_lr)
        self.D_k = nn.Parameter(torch.randn(d_model))
        common = {"d_state": d_state, "channels": 1, "dt_min": dt_min, "dt_max": dt_max, "ssm_lr": ssm_lr}
        if inner == "s4d":
            self.ssm = DiagSSM(heads, init="lin", disc="bilinear", **common)
        else:
            self.ssm = DPLRSSM(heads, measure="legs", l_max=l_max, **common)
        self.D = nn.Parameter(torch.randn(heads))
        self.out_proj = Linear(d_model, d_model)

    def _heads(self, t: Tensor) -> Tensor:
        """(B, D, ...) → (B, d, H, ...): channel h·d + i to [i, h]."""
        return t.unflatten(1, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        *,
        state: H3State | None = None,
        return_state: bool = False,
        mask: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, H3State]:
        lengths = mask_lengths(mask, x.shape[1])
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        s_shift, s_inner = state if state is not None else (None, None)
        dtype = ssm_dtype(self.ssm)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q, k, v = (t.to(dtype).transpose(1, 2) for t in (q, k, v))  # (B, D, L)
            ks, s_shift = self.shift(k, s_shift, lengths, return_state)
            k = ks + self.D_k.to(dtype).unsqueeze(-1) * k
            kv = self._heads(k).unsqueeze(2) * self._heads(v).unsqueeze(1)  # (B, d1, d2, H, L)
            y, s_inner = self.ssm(kv, s_inner, lengths, return_state)
            y = y.squeeze(-3) + self.D.to(dtype).unsqueeze(-1) * kv
            o = (y * self._heads(q).unsqueeze(2)).sum(1)  # (B, d2, H, L)
            o = o.flatten(1, 2).transpose(1, 2)  # (B, L, D), channels (j h)
        y = self.out_proj(o.to(x.dtype))
        return (y, (s_shift, s_inner)) if return_state else y

    def init_state(self, batch: int, *, device=None, dtype=None) -> H3State:
        d = self.head_dim
        return (
            self.shift.init_state((batch,), device=device, dtype=dtype),
            self.ssm.init_state((batch, d, d), device=device, dtype=dtype),
        )

    def step(self, x_t: Tensor, state: H3State) -> tuple[Tensor, H3State]:
        q, k, v = self.q_proj(x_t), self.k_proj(x_t), self.v_proj(x_t)
        s_shift, s_inner = state
        dtype = ssm_dtype(self.ssm)
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            q, k, v = (t.to(dtype) for t in (q, k, v))
            ks, s_shift = self.shift.step(k, s_shift)
            k = ks + self.D_k.to(dtype) * k
            kv = self._heads(k).unsqueeze(2) * self._heads(v).unsqueeze(1)  # (B, d1, d2, H)
            y, s_inner = self.ssm.step(kv, s_inner)
            y = y.squeeze(-2) + self.D.to(dtype) * kv
            o = (y * self._heads(q).unsqueeze(2)).sum(1).flatten(1)  # (B, d2·H)
        return self.out_proj(o.to(x_t.dtype)), (s_shift, s_inner)


def _heads(dim: int, heads: int | None) -> int:
    return dim if heads is None else heads


def _shape(in_types: list[TensorType], **args: Any) -> TensorType:
    out = same_as_input(in_types)
    check_ssm_args(args["d_state"], args["dt_min"], args["dt_max"])
    heads = _heads(out.dim, args["heads"])
    if out.dim % heads:
        raise ShapeError(f"dim {out.dim} is not divisible by heads {heads}")
    return out


def _build(in_types: list[TensorType], **args: Any) -> H3Block:
    dim = in_types[0].dim
    return H3Block(
        dim,
        _heads(dim, args["heads"]),
        d_state=args["d_state"],
        inner=args["inner"],
        l_max=args["l_max"],
        dt_min=args["dt_min"],
        dt_max=args["dt_max"],
        ssm_lr=args["ssm_lr"],
    )


def _rows(params: tuple[str, ...], **layout: int) -> tuple[PermAxis, ...]:
    return tuple(PermAxis(p, 0, **layout) for p in params)


_Q, _V = ("q_proj.weight", "q_proj.bias"), ("v_proj.weight", "v_proj.bias")
_K = ("k_proj.weight", "k_proj.bias", "shift.B", "shift.C", "D_k")  # everything indexed by k's features


def _spaces(in_types: list[TensorType], *, heads: int | None, d_state: int, inner: str, **_: Any) -> list[PermSpace]:
    dim = in_types[0].dim
    H = _heads(dim, heads)
    d, dplr = dim // H, inner == "s4"
    spaces = [ssm_mode_space("ssm.", d_state, dplr=dplr)]
    if H > 1:  # features are head-major (h·d + i); out_proj's columns are j-major (j·H + h)
        axes = (
            *_rows(_Q + _K + _V, group=d),
            *ssm_feature_axes("ssm.", dplr=dplr),
            PermAxis("D", 0),
            PermAxis("out_proj.weight", 1, chunks=d),
        )
        spaces.append(PermSpace("heads", H, axes, "heads"))
    if d > 1:
        spaces.append(PermSpace("qk_dims", d, _rows(_Q + _K, chunks=H), "index i of q and k, alike in every head"))
        axes = (*_rows(_V, chunks=H), PermAxis("out_proj.weight", 1, group=H))
        spaces.append(PermSpace("v_dims", d, axes, "index j of v and of the output, alike in every head"))
    spaces.append(PermSpace(INPUT_SPACE, dim, tuple(PermAxis(f"{m}.weight", 1) for m in ("q_proj", "k_proj", "v_proj"))))
    spaces.append(PermSpace(OUTPUT_SPACE, dim, rows_of("out_proj")))
    return spaces


_SSM_PARAMS = ssm_params(
    docs={
        "d_state": "state size N of both SSMs (shift width; N/2 complex modes inside)",
        "dt_min": "smallest initial step size Δ of the inner SSM",
        "dt_max": "largest initial step size Δ of the inner SSM",
        "ssm_lr": "learning rate of the SSM parameters (no weight decay); 0 freezes them",
    }
)

H3 = BlockSpec(
    name="mix.h3",
    examples=({"d_state": 8}, {"d_state": 8, "heads": 2, "inner": "s4"}),
    role="mix",
    doc="H3: q/k/v projections, shift SSM on K, diagonal (S4D) or DPLR (S4) SSM on K·V, Q gating",
    reference="Fu et al. 2023, Hungry Hungry Hippos: Towards Language Modeling with State Space Models; "
    "HazyResearch/H3 src/models/ssm/h3.py",
    params=(
        _SSM_PARAMS.d_state,
        Param(
            "heads",
            int,
            None,
            "number of heads H (head size dim/H); null = dim (head size 1, H3's default)",
            min=1,
            nullable=True,
        ),
        Param("inner", str, "s4d", "SSM on K·V: S4D (Lin init, bilinear) or S4 (DPLR, LegS)", choices=("s4d", "s4")),
        Param("l_max", int, 1024, "kernel length of the S4 inner SSM (ignored for s4d)", min=1),
        _SSM_PARAMS.dt_min,
        _SSM_PARAMS.dt_max,
        _SSM_PARAMS.ssm_lr,
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
    return [H3]
