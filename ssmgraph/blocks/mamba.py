"""``mix.mamba``: the Mamba block, a selective state space model (S6) mixer.

Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (§3.4,
Fig. 3), following state-spaces/mamba ``mamba_ssm/modules/mamba_simple.py`` (parameter
names, shapes and initialisation are the same, so upstream state dicts load as they are).
With E = expand·d_model channels and N = d_state::

    x, z = in_proj(u)                                  (B, L, E) each
    x    = silu(causal depthwise conv1d(x))            kernel d_conv
    δ, B, C = x_proj(x)                                (R, N, N) per token, R = dt_rank
    Δ    = softplus(dt_proj(δ))                        (B, L, E), the bias holds softplus⁻¹(dt₀)
    h_t  = exp(Δ_t A) ⊙ h_{t-1} + Δ_t x_t B_t          A = -exp(A_log), h_t of shape (E, N)
    y_t  = h_t C_t + D ⊙ x_t
    out  = out_proj(y ⊙ silu(z))

Discretisation is upstream's: zero-order hold for A, Euler (ΔB) for B. The scan runs in
fp32 with autocast disabled (fp64 models stay fp64) through
:func:`ssmgraph.ops.selective_scan.selective_scan`; ``scan`` picks its CPU algorithm.

Initialisation (upstream's): Linear and Conv1d layers keep PyTorch's defaults; dt_proj's
weight is U(±dt_scale/√R) (or the constant dt_scale/√R); dt_proj's bias is softplus⁻¹(dt₀)
with dt₀ = exp(U[log dt_min, log dt_max]) clamped to ≥ dt_init_floor, computed with the
stable inverse dt₀ + log(-expm1(-dt₀)); A_log = log(1..N) in every row (S4D-Real); D = 1.
A_log and D are fp32 parameters with no weight decay (``mark_optim``; ``ssm_lr`` sets their
learning rate, null keeps the group's as upstream does). The model-level init of the
upstream LM (out_proj rescaled by 1/√n_layer, biases zeroed) belongs to the model, not to
this block.

Re-initialisation: upstream's LM init zeroes every Linear bias except those flagged
``_no_reinit``. We set the same flag, ``dt_proj.bias._no_reinit = True``, so an init pass
that zeroes biases must skip flagged parameters; :meth:`Mamba.reset_parameters` redraws the
whole block init (dt bias included), so calling it after any generic re-init restores the
reference initialisation.

Recurrent state: ``(conv_state, ssm_state)`` as in upstream ``step``: conv_state
(B, E, d_conv) holds the last d_conv pre-conv inputs (oldest first), ssm_state (B, E, N) is
h (fp32, or fp64 for fp64 models). ``forward(state=...)`` prepends the last d_conv - 1
entries of conv_state to the conv input, so chunked processing equals one pass. With
``mask`` (right padding), Δ is zero at padded positions, which leaves h unchanged there; the
final conv_state is read at each sequence's own end, and outputs at padded positions are 0.

Permutation spaces: ``inner``, the E channels (rows of both in_proj halves, the depthwise
conv, dt_proj's rows and bias, A_log's rows, D, and the columns of x_proj and out_proj);
``state``, the N state entries of every channel (the B and C rows of x_proj, A_log's
columns); ``dt_rank``, the R entries of δ (x_proj's first rows, dt_proj's columns). Input
features: in_proj's columns; output features: out_proj's rows (and bias).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmgraph.blocks.optim_hints import mark_optim
from ssmgraph.blocks.ssm_params import check_dt_range, ssm_params
from ssmgraph.ops.causal_conv import conv_step, last_inputs, pad_mask, padded_inputs, step_window
from ssmgraph.ops.discretize import dt_bias_init
from ssmgraph.ops.final_state import mask_lengths
from ssmgraph.ops.linear import Linear, linear
from ssmgraph.ops.precision import compute_dtype, state_placement
from ssmgraph.ops.selective_scan import METHODS, selective_scan
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

MambaState = tuple[Tensor, Tensor]


def resolve_dt_rank(dt_rank: str | int, d_model: int) -> int:
    """``"auto"`` means ceil(d_model / 16), as upstream."""
    if dt_rank == "auto":
        return math.ceil(d_model / 16)
    if isinstance(dt_rank, bool) or not isinstance(dt_rank, int) or dt_rank < 1:
        raise ValueError(f"dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
    return dt_rank


class Mamba(nn.Module):
    """The Mamba mixer over B×L×D (``mamba_simple.Mamba`` without the CUDA fast paths)."""

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank: str | int = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        ssm_lr: float | None = None,
        scan: str = "auto",
    ):
        super().__init__()
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        if scan not in METHODS:
            raise ValueError(f"scan must be one of {', '.join(METHODS)}, got {scan!r}")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = resolve_dt_rank(dt_rank, d_model)
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.dt_init, self.dt_scale = dt_init, dt_scale
        self.scan = scan
        e, n = self.d_inner, d_state
        self.in_proj = Linear(d_model, 2 * e, bias=bias)
        # padding is explicit in forward (the carried conv state, or zeros)
        self.conv1d = nn.Conv1d(e, e, kernel_size=d_conv, groups=e, bias=conv_bias)
        self.x_proj = Linear(e, self.dt_rank + 2 * n, bias=False)
        self.dt_proj = Linear(self.dt_rank, e, bias=True)
        self.dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]  # upstream's flag, see module doc
        self.A_log = nn.Parameter(torch.empty(e, n, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(e, dtype=torch.float32))
        for p in (self.A_log, self.D):
            mark_optim(p, lr=ssm_lr, weight_decay=0.0)
            p._no_weight_decay = True  # type: ignore[attr-defined]  # upstream's flag, for ported training code
        self.out_proj = Linear(e, d_model, bias=bias)
        self._init_ssm()

    def _init_ssm(self) -> None:
        """The Mamba-specific init: dt_proj (weight and softplus⁻¹ bias), A_log, D."""
        std = self.dt_rank**-0.5 * self.dt_scale
        with torch.no_grad():
            if self.dt_init == "constant":
                nn.init.constant_(self.dt_proj.weight, std)
            else:
                nn.init.uniform_(self.dt_proj.weight, -std, std)
            self.dt_proj.bias.copy_(dt_bias_init(self.d_inner, self.dt_min, self.dt_max, self.dt_init_floor))
            n = torch.arange(1, self.d_state + 1, dtype=torch.float32)
            self.A_log.copy_(torch.log(n).expand(self.d_inner, -1))
            self.D.fill_(1.0)

    def reset_parameters(self) -> None:
        """Redraw the whole reference initialisation (the dt bias included)."""
        for m in (self.in_proj, self.conv1d, self.x_proj, self.dt_proj, self.out_proj):
            m.reset_parameters()
        self._init_ssm()

    def init_state(self, batch: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None) -> MambaState:
        """Zero (conv_state (B, E, d_conv), ssm_state (B, E, N)); ssm_state is at least fp32."""
        device, dtype = state_placement(self.in_proj.weight, device, dtype)
        conv_state = torch.zeros(batch, self.d_inner, self.d_conv, device=device, dtype=dtype)
        ssm_state = torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=compute_dtype(dtype))
        return conv_state, ssm_state

    def _ssm_inputs(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(δ projected to E channels without bias, B, C) from the conv output u (..., E)."""
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return linear(dt, self.dt_proj.weight), B, C

    def forward(
        self, x: Tensor, *, state: MambaState | None = None, return_state: bool = False, mask: Tensor | None = None
    ) -> Tensor | tuple[Tensor, MambaState]:
        xi, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, E) each
        xi = xi.transpose(1, 2)  # (B, E, L) for the depthwise conv
        window, h0 = (None, None) if state is None else state
        u = F.silu(self.conv1d(padded_inputs(xi, window, self.d_conv)))  # (B, E, L)
        dt, B, C = self._ssm_inputs(u.transpose(1, 2))
        cdt = compute_dtype(x.dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            delta = F.softplus(dt.to(cdt) + self.dt_proj.bias.to(cdt))  # (B, L, E)
            delta = pad_mask(delta, mask)  # Δ = 0: h passes padding unchanged
            y, h_last = selective_scan(
                u.to(cdt),
                delta.transpose(1, 2),
                -torch.exp(self.A_log.to(cdt)),
                B.to(cdt).transpose(1, 2),
                C.to(cdt).transpose(1, 2),
                D=self.D.to(cdt),
                z=z.transpose(1, 2),
                return_last_state=True,
                initial_state=h0,
                method=self.scan,
            )
        out = pad_mask(self.out_proj(y.transpose(1, 2).to(xi.dtype)), mask)
        if not return_state:
            return out
        return out, (last_inputs(xi, window, self.d_conv, mask_lengths(mask, x.shape[1])), h_last)

    def step(self, x_t: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """One token: x_t (B, D) -> (y_t (B, D), new state); no in-place updates."""
        conv_state, h = state
        xi, z = self.in_proj(x_t).chunk(2, dim=-1)  # (B, E)
        conv_state = step_window(conv_state, xi)
        u = F.silu(conv_step(conv_state, self.conv1d.weight, self.conv1d.bias))  # (B, E)
        dt, B, C = self._ssm_inputs(u)
        cdt = compute_dtype(x_t.dtype)
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            u, B, C = u.to(cdt), B.to(cdt), C.to(cdt)
            delta = F.softplus(dt.to(cdt) + self.dt_proj.bias.to(cdt))
            A = -torch.exp(self.A_log.to(cdt))
            h = torch.exp(delta.unsqueeze(-1) * A) * h.to(cdt) + (delta * u).unsqueeze(-1) * B.unsqueeze(1)
            y = (h * C.unsqueeze(1)).sum(-1) + self.D.to(cdt) * u
            y = y * F.silu(z.to(cdt))
        return self.out_proj(y.to(xi.dtype)), (conv_state, h)


def _shape(in_types: Sequence[TensorType], **args: Any) -> TensorType:
    out = same_as_input(in_types)
    d_model = out.dim
    try:
        resolve_dt_rank(args["dt_rank"], d_model)
    except ValueError as e:
        raise ShapeError(str(e)) from None
    if int(args["expand"] * d_model) < 1:
        raise ShapeError(f"expand {args['expand']} × d_model {d_model} leaves no inner channel")
    check_dt_range(args["dt_min"], args["dt_max"])
    return out


def _build(in_types: Sequence[TensorType], **args: Any) -> Mamba:
    return Mamba(in_types[0].dim, **args)


def _spaces(
    in_types: Sequence[TensorType], *, d_state: int, expand: float, dt_rank: str | int, conv_bias: bool, bias: bool, **_: Any
) -> tuple[PermSpace, ...]:
    d_model = in_types[0].dim
    rank = resolve_dt_rank(dt_rank, d_model)
    halves = ("in_proj.weight", "in_proj.bias") if bias else ("in_proj.weight",)
    channel = [PermAxis(p, 0, chunks=2) for p in halves]
    channel += [PermAxis(p, 0) for p in ("conv1d.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D")]
    channel += [PermAxis(p, 1) for p in ("x_proj.weight", "out_proj.weight")]
    if conv_bias:
        channel.append(PermAxis("conv1d.bias", 0))
    return (
        PermSpace("inner", int(expand * d_model), tuple(channel), "inner channels E"),
        PermSpace(
            "state", d_state, (PermAxis("x_proj.weight", 0, chunks=2, start=rank), PermAxis("A_log", 1)), "state entries N"
        ),
        PermSpace("dt_rank", rank, (PermAxis("x_proj.weight", 0), PermAxis("dt_proj.weight", 1)), "entries of the low-rank δ"),
        PermSpace(INPUT_SPACE, d_model, (PermAxis("in_proj.weight", 1),)),
        PermSpace(OUTPUT_SPACE, d_model, rows_of("out_proj", bias)),
    )


_SSM_PARAMS = ssm_params(
    16,
    ssm_lr=None,
    min_state=1,
    docs={
        "d_state": "SSM state size N per channel",
        "dt_min": "smallest initial Δ (log-uniform init)",
        "dt_max": "largest initial Δ (log-uniform init)",
        "ssm_lr": "learning rate of A_log and D (null: the group's, as upstream)",
    },
)

MAMBA = BlockSpec(
    name="mix.mamba",
    examples=({}, {"scan": "blelloch", "bias": True}),
    role="mix",
    doc="Mamba selective SSM block (S6): expand, causal conv + SiLU, input-dependent Δ/B/C scan, SiLU(z) gate.",
    params=(
        _SSM_PARAMS.d_state,
        Param("d_conv", int, 4, "width of the causal depthwise convolution", min=1),
        Param("expand", (int, float), 2, "inner width E = int(expand · d_model)", min=0),
        Param("dt_rank", (str, int), "auto", "rank R of the Δ projection: 'auto' = ceil(d_model / 16), or an int"),
        _SSM_PARAMS.dt_min,
        _SSM_PARAMS.dt_max,
        Param(
            "dt_init",
            str,
            "random",
            "dt_proj weight init: U(±dt_scale/√R) or the constant dt_scale/√R",
            choices=("random", "constant"),
        ),
        Param("dt_scale", float, 1.0, "scale of the dt_proj weight init", min=0),
        Param("dt_init_floor", float, 1e-4, "lower clamp of the initial Δ", min=0),
        Param("conv_bias", bool, True, "bias in the depthwise convolution"),
        Param("bias", bool, False, "biases in in_proj and out_proj"),
        _SSM_PARAMS.ssm_lr,
        Param("scan", str, "auto", "selective-scan algorithm (auto picks by shape; see docs/blocks/mamba.md)", choices=METHODS),
    ),
    factory=_build,
    shape=_shape,
    perm_spaces=_spaces,
    causal=True,
    bidirectional=False,
    step=True,
    pointwise=False,
    reference=(
        "Gu & Dao 2023, Mamba: Linear-Time Sequence Modeling with Selective State Spaces; "
        "state-spaces/mamba mamba_ssm/modules/mamba_simple.py"
    ),
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [MAMBA]
