"""``mix.mamba2``: the Mamba-2 block, a selective SSM with scalar-identity A per head, run as SSD.

Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
Structured State Space Duality" (§7, Fig. 6), following state-spaces/mamba
``mamba_ssm/modules/mamba2.py`` and transformers' ``Mamba2Mixer`` (parameter names, shapes
and order are the same, so their state dicts load as they are). With E = int(expand·d_model)
channels in H = E/P heads of P = headdim, G = n_groups and N = d_state::

    z, xBC, δ = in_proj(u)                            (E, E + 2GN, H) per token
    x, B, C   = silu(causal depthwise conv1d(xBC))    kernel d_conv; B, C of G groups of N
    Δ         = clamp(softplus(δ + dt_bias), dt_limit_min, dt_limit_max)     (H,) per token
    h_t       = exp(Δ_t A) h_{t-1} + Δ_t x_t B_tᵀ     A = -exp(A_log), one scalar per head
    y_t       = h_t C_t + D x_t
    out       = out_proj(RMSNorm_G(y ⊙ silu(z)))      norm over groups of E/G channels

The scan is :func:`ssmgraph.ops.ssd.ssd_chunked` (chunk_size steps per chunk), in fp32 with
autocast disabled (fp64 models stay fp64). ``norm_before_gate`` computes RMSNorm(y) ⊙ silu(z)
instead; ``rmsnorm: false`` drops the norm (y ⊙ silu(z)), as upstream.

Initialisation (upstream's): Linear and Conv1d layers keep PyTorch's defaults; dt_bias is
softplus⁻¹(dt₀) with dt₀ = exp(U[log dt_min, log dt_max]) clamped to ≥ dt_init_floor;
A_log = log(U[1, 16]) per head; D = 1; the norm's weight 1. A_log, D and dt_bias are fp32
parameters without weight decay (``ssm_lr`` sets their learning rate, null keeps the group's).

Recurrent state: ``(conv_state, ssm_state)``: conv_state (B, E + 2GN, d_conv) holds the last
d_conv conv inputs (oldest first), ssm_state (B, H, P, N) is h (at least fp32). With ``mask``
(right padding), Δ is zero at padded positions, so h passes them unchanged; the final
conv_state is read at each sequence's own end, and outputs at padded positions are 0.

Permutation spaces: ``heads``, the heads of a group, the same way in every group (z and x
rows, their conv channels, the δ rows, dt_bias, A_log, D, the norm's weight, out_proj's
columns); ``head_dim``, the P channels of every head; ``state``, the N entries of B and C in
every group (their in_proj rows and conv channels); ``groups``, whole groups of heads with their
B and C. Input features: in_proj's columns; output features: out_proj's rows (and bias).
"""

from __future__ import annotations

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
from ssmgraph.ops.gated_norm import gated_rms_norm
from ssmgraph.ops.linear import Linear
from ssmgraph.ops.precision import compute_dtype, state_placement
from ssmgraph.ops.ssd import ssd_chunked, ssd_step
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

Mamba2State = tuple[Tensor, Tensor]
A_INIT_RANGE = (1.0, 16.0)
"""Upstream's ``A_init_range``: A = -U[1, 16] per head at init."""


class Mamba2(nn.Module):
    """The Mamba-2 mixer over B×L×D (``mamba2.Mamba2`` without the CUDA fast paths)."""

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        d_conv: int = 4,
        expand: float = 2,
        headdim: int = 32,
        n_groups: int = 1,
        chunk_size: int = 64,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        dt_limit_min: float = 0.0,
        dt_limit_max: float | None = None,
        rmsnorm: bool = True,
        norm_before_gate: bool = False,
        norm_eps: float = 1e-5,
        conv_bias: bool = True,
        bias: bool = False,
        ssm_lr: float | None = None,
    ):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        if self.d_inner % headdim or (self.d_inner // headdim) % n_groups:
            raise ValueError(f"{self.d_inner} channels do not make whole heads of {headdim} in {n_groups} groups")
        self.headdim, self.n_groups, self.chunk_size = headdim, n_groups, chunk_size
        self.nheads = self.d_inner // headdim
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.dt_limit = (dt_limit_min, dt_limit_max)
        self.norm_eps, self.norm_before_gate = norm_eps, norm_before_gate
        e, h = self.d_inner, self.nheads
        self.conv_dim = e + 2 * n_groups * d_state
        self.in_proj = Linear(d_model, e + self.conv_dim + h, bias=bias)
        # padding is explicit in forward (the carried conv state, or zeros)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=d_conv, groups=self.conv_dim, bias=conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(h, dtype=torch.float32))
        self.A_log = nn.Parameter(torch.empty(h, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(h, dtype=torch.float32))
        for p in (self.dt_bias, self.A_log, self.D):
            mark_optim(p, lr=ssm_lr, weight_decay=0.0)
            p._no_weight_decay = True  # type: ignore[attr-defined]  # upstream's flag, for ported training code
        self.norm = _GatedNormWeight(e) if rmsnorm else None
        self.out_proj = Linear(e, d_model, bias=bias)
        self._init_ssm()

    def _init_ssm(self) -> None:
        """The Mamba-2-specific init: dt_bias (softplus⁻¹ of a log-uniform Δ), A_log, D, the norm."""
        with torch.no_grad():
            self.dt_bias.copy_(dt_bias_init(self.nheads, self.dt_min, self.dt_max, self.dt_init_floor))
            self.A_log.copy_(torch.log(torch.empty(self.nheads).uniform_(*A_INIT_RANGE)))
            self.D.fill_(1.0)
            if self.norm is not None:
                self.norm.weight.fill_(1.0)

    def reset_parameters(self) -> None:
        """Redraw the whole reference initialisation."""
        for m in (self.in_proj, self.conv1d, self.out_proj):
            m.reset_parameters()
        self._init_ssm()

    def init_state(self, batch: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None) -> Mamba2State:
        """Zero (conv_state (B, E + 2GN, d_conv), ssm_state (B, H, P, N)); ssm_state is at least fp32."""
        device, dtype = state_placement(self.in_proj.weight, device, dtype)
        conv_state = torch.zeros(batch, self.conv_dim, self.d_conv, device=device, dtype=dtype)
        ssm_state = torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device, dtype=compute_dtype(dtype))
        return conv_state, ssm_state

    def _delta(self, dt: Tensor, cdt: torch.dtype) -> Tensor:
        delta = F.softplus(dt.to(cdt) + self.dt_bias.to(cdt))
        lo, hi = self.dt_limit
        return delta.clamp(min=lo, max=hi) if lo > 0 or hi is not None else delta

    def _gate_norm(self, y: Tensor, z: Tensor) -> Tensor:
        weight = None if self.norm is None else self.norm.weight.to(y.dtype)
        return gated_rms_norm(y, z.to(y.dtype), weight, self.norm_eps, self.n_groups, self.norm_before_gate)

    def forward(
        self, x: Tensor, *, state: Mamba2State | None = None, return_state: bool = False, mask: Tensor | None = None
    ) -> Tensor | tuple[Tensor, Mamba2State]:
        e, g, n = self.d_inner, self.n_groups, self.d_state
        z, xbc, dt = self.in_proj(x).split([e, self.conv_dim, self.nheads], dim=-1)
        xbc = xbc.transpose(1, 2)  # (B, E + 2GN, L) for the depthwise conv
        window, h0 = (None, None) if state is None else state
        u = F.silu(self.conv1d(padded_inputs(xbc, window, self.d_conv))).transpose(1, 2)
        xs, B, C = u.split([e, g * n, g * n], dim=-1)
        cdt = compute_dtype(x.dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            y, h_last = ssd_chunked(
                xs.to(cdt).unflatten(-1, (self.nheads, self.headdim)),
                pad_mask(self._delta(dt, cdt), mask),  # Δ = 0: h passes padding unchanged
                -torch.exp(self.A_log.to(cdt)),
                B.to(cdt).unflatten(-1, (g, n)),
                C.to(cdt).unflatten(-1, (g, n)),
                self.chunk_size,
                D=self.D.to(cdt),
                initial_state=h0,
                return_final_state=True,
            )
            y = self._gate_norm(y.flatten(-2), z)
        out = pad_mask(self.out_proj(y.to(xbc.dtype)), mask)
        if not return_state:
            return out
        return out, (last_inputs(xbc, window, self.d_conv, mask_lengths(mask, x.shape[1])), h_last)

    def step(self, x_t: Tensor, state: Mamba2State) -> tuple[Tensor, Mamba2State]:
        """One token: x_t (B, D) -> (y_t (B, D), new state); no in-place updates."""
        conv_state, h = state
        e, g, n = self.d_inner, self.n_groups, self.d_state
        z, xbc, dt = self.in_proj(x_t).split([e, self.conv_dim, self.nheads], dim=-1)
        conv_state = step_window(conv_state, xbc)
        u = F.silu(conv_step(conv_state, self.conv1d.weight, self.conv1d.bias))  # (B, E + 2GN)
        xs, B, C = u.split([e, g * n, g * n], dim=-1)
        cdt = compute_dtype(x_t.dtype)
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            y, h = ssd_step(
                h.to(cdt),
                xs.to(cdt).unflatten(-1, (self.nheads, self.headdim)),
                self._delta(dt, cdt),
                -torch.exp(self.A_log.to(cdt)),
                B.to(cdt).unflatten(-1, (g, n)),
                C.to(cdt).unflatten(-1, (g, n)),
                self.D.to(cdt),
            )
            y = self._gate_norm(y.flatten(-2), z)
        return self.out_proj(y.to(xbc.dtype)), (conv_state, h)


class _GatedNormWeight(nn.Module):
    """Holds the gated RMSNorm's weight under upstream's name (``norm.weight``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


def _sizes(d_model: int, expand: float, headdim: int, n_groups: int) -> tuple[int, int]:
    """(E, H), or ShapeError when the channels do not make whole heads in whole groups."""
    e = int(expand * d_model)
    if e < 1:
        raise ShapeError(f"expand {expand} × d_model {d_model} leaves no inner channel")
    if e % headdim:
        divisors = [d for d in range(1, e + 1) if e % d == 0 and d <= 128]
        raise ShapeError(f"headdim {headdim} does not divide the {e} inner channels (expand × d_model); try one of {divisors}")
    if (e // headdim) % n_groups:
        raise ShapeError(f"n_groups {n_groups} does not divide the {e // headdim} heads (inner channels / headdim)")
    return e, e // headdim


def _shape(in_types: Sequence[TensorType], **args: Any) -> TensorType:
    out = same_as_input(in_types)
    _sizes(out.dim, args["expand"], args["headdim"], args["n_groups"])
    check_dt_range(args["dt_min"], args["dt_max"])
    hi = args["dt_limit_max"]
    if hi is not None and hi <= args["dt_limit_min"]:
        raise ShapeError(f"dt_limit_max {hi:g} must be above dt_limit_min {args['dt_limit_min']:g}")
    if args["norm_before_gate"] and not args["rmsnorm"]:
        raise ShapeError("norm_before_gate needs rmsnorm: true (there is no norm to place before the gate)")
    return out


def _build(in_types: Sequence[TensorType], **args: Any) -> Mamba2:
    return Mamba2(in_types[0].dim, **args)


def _spaces(
    in_types: Sequence[TensorType],
    *,
    d_state: int,
    expand: float,
    headdim: int,
    n_groups: int,
    rmsnorm: bool,
    conv_bias: bool,
    bias: bool,
    **_: Any,
) -> tuple[PermSpace, ...]:
    d_model = in_types[0].dim
    e, h = _sizes(d_model, expand, headdim, n_groups)
    g, n, p, hg = n_groups, d_state, headdim, h // n_groups
    dt_start = 2 * e + 2 * g * n  # in_proj rows: z (E) | x (E) | B (GN) | C (GN) | δ (H)
    projs = ("in_proj.weight", "in_proj.bias") if bias else ("in_proj.weight",)
    convs = ("conv1d.weight", "conv1d.bias") if conv_bias else ("conv1d.weight",)
    per_head = ("dt_bias", "A_log", "D")
    norm = ("norm.weight",) if rmsnorm else ()

    def axes(
        z_x: dict[str, int], bc: dict[str, int], dt: dict[str, int], x: dict[str, int], head: dict[str, int]
    ) -> tuple[PermAxis, ...]:
        """One space's axes on every tensor, by what it moves (an empty dict: nothing there): z and x
        rows, B and C rows, δ rows, the x channels after in_proj (conv, norm, out_proj), per-head tensors."""
        out: list[PermAxis] = []
        placed = ((z_x, projs, 0), (bc, projs, 2 * e), (dt, projs, dt_start), (x, (*convs, *norm), 0), (bc, convs, e))
        for where, tensors, start in (*placed, (head, per_head, 0)):
            if where:
                out += [PermAxis(t, 0, start=start, **where) for t in tensors]
        return (*out, PermAxis("out_proj.weight", 1, **x)) if x else tuple(out)

    return (
        PermSpace(
            "heads",
            hg,
            axes({"group": p, "chunks": 2 * g}, {}, {"chunks": g}, {"group": p, "chunks": g}, {"chunks": g}),
            "the heads of each group (the same way in every group)",
        ),
        PermSpace("head_dim", p, axes({"chunks": 2 * h}, {}, {}, {"chunks": h}, {}), "the channels of every head"),
        PermSpace("state", n, axes({}, {"chunks": 2 * g}, {}, {}, {}), "the state entries N of B and C in every group"),
        PermSpace(
            "groups",
            g,
            axes({"group": hg * p, "chunks": 2}, {"group": n, "chunks": 2}, {"group": hg}, {"group": hg * p}, {"group": hg}),
            "groups of heads with their B and C",
        ),
        PermSpace(INPUT_SPACE, d_model, (PermAxis("in_proj.weight", 1),)),
        PermSpace(OUTPUT_SPACE, d_model, rows_of("out_proj", bias)),
    )


_SSM_PARAMS = ssm_params(
    64,
    ssm_lr=None,
    min_state=1,
    docs={
        "d_state": "SSM state size N per head channel",
        "dt_min": "smallest initial Δ (log-uniform init of dt_bias)",
        "dt_max": "largest initial Δ (log-uniform init of dt_bias)",
        "ssm_lr": "learning rate of A_log, D and dt_bias (null: the group's, as upstream)",
    },
)

MAMBA2 = BlockSpec(
    name="mix.mamba2",
    examples=(
        {},
        {"headdim": 4, "n_groups": 2, "d_state": 3, "chunk_size": 3, "bias": True, "dt_limit_min": 1e-3, "dt_limit_max": 0.05},
        {"headdim": 8, "d_state": 4, "chunk_size": 5, "rmsnorm": False, "conv_bias": False, "d_conv": 2, "expand": 1},
    ),
    role="mix",
    doc="Mamba-2 block (SSD): expand, causal conv + SiLU over x/B/C, scalar-A-per-head selective scan in chunks, gated RMSNorm.",
    params=(
        _SSM_PARAMS.d_state,
        Param("d_conv", int, 4, "width of the causal depthwise convolution over x, B and C", min=1),
        Param("expand", (int, float), 2, "inner width E = int(expand · d_model)", min=0),
        Param("headdim", int, 32, "channels P per head (H = E / P heads); must divide E", min=1),
        Param("n_groups", int, 1, "groups G of B and C, each shared by H / G heads; must divide H", min=1),
        Param("chunk_size", int, 64, "steps per chunk of the SSD scan (any length works)", min=1),
        _SSM_PARAMS.dt_min,
        _SSM_PARAMS.dt_max,
        Param("dt_init_floor", float, 1e-4, "lower clamp of the initial Δ", min=0),
        Param("dt_limit_min", float, 0.0, "Δ is clamped to at least this (upstream's dt_limit[0])", min=0),
        Param("dt_limit_max", float, None, "Δ is clamped to at most this (null: no upper limit)", min=0, nullable=True),
        Param("rmsnorm", bool, True, "gated RMSNorm before out_proj (false: y · silu(z) alone)"),
        Param("norm_before_gate", bool, False, "RMSNorm(y) · silu(z) instead of RMSNorm(y · silu(z))"),
        Param("norm_eps", float, 1e-5, "epsilon of the gated RMSNorm", min=0),
        Param("conv_bias", bool, True, "bias in the depthwise convolution"),
        Param("bias", bool, False, "biases in in_proj and out_proj"),
        _SSM_PARAMS.ssm_lr,
    ),
    factory=_build,
    shape=_shape,
    perm_spaces=_spaces,
    causal=True,
    bidirectional=False,
    step=True,
    pointwise=False,
    reference=(
        "Dao & Gu 2024, Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State Space "
        "Duality; state-spaces/mamba mamba_ssm/modules/mamba2.py"
    ),
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [MAMBA2]
