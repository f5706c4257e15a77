"""``mix.mlstm``: the mLSTM block of xLSTM, a matrix-memory LSTM with exponential gating.

Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp, Klambauer, Brandstetter, Hochreiter 2024,
"xLSTM: Extended Long Short-Term Memory" (arXiv 2405.04517), §2.3 (mLSTM, Eqs. 19-27), §2.4 and
Fig. 10 (the pre-up-projection mLSTM block), appendix A.3 (stabilisation); where the paper is
silent, the official NX-AI/xlstm ``mLSTMLayer`` / ``mLSTMCell`` (``xlstm/blocks/mlstm``). With
E = proj_factor·D rounded up to a multiple of ``round_to``, H heads of d = E/H::

    x, z   = proj_up(u)                                  (B, L, E) each
    c      = silu(causal depthwise conv(x))              kernel conv_kernel
    q, k   = q_proj(c), k_proj(c);  v = v_proj(x)        block-diagonal, blocks of qkv_blocksize
    ĩ, f̃   = igate([q, k, v]), fgate([q, k, v])         one of each per head
    h      = mLSTM(q, k, v, ĩ, f̃)                         per head, ssmgraph.ops.mlstm (k / √d)
    y      = (HeadLayerNorm(h) + learnable_skip ⊙ c) ⊙ silu(z)
    out    = proj_down(y)

The memory (ops/mlstm.py): C_t = f_t C_{t-1} + i_t v_t k_tᵀ, n_t = f_t n_{t-1} + i_t k_t,
h_t = C_t q_t / max(|n_tᵀ q_t|, exp(-m_t)) with i_t = exp(ĩ_t), f_t = σ(f̃_t) (or exp(f̃_t)) and
the stabiliser m_t; the output gate of Eq. 25 is silu(z), as in the paper's block and the
official layer. ``forward`` runs the chunked parallel form (``chunk`` positions per chunk),
``step`` the recurrence; they are equal.

Initialisation (the official ``reset_parameters``): proj_up, q/k/v ~ N(0, 2/(5D)); proj_down
~ N(0, (2/√D)²) (``wang_init`` for one block; rescaling by the number of blocks is model-level);
learnable_skip = 1; igate weight 0, bias N(0, 0.1²); fgate weight 0, bias linspace(3, 6, H);
the head norm's weight 0 (it scales by 1 + weight); the conv keeps PyTorch's init.

State: ``(conv_state (B, E, K), C (B, H, d, d), n (B, H, d), m (B, H))``; conv_state holds the
last K pre-conv inputs (as mix.mamba), C/n/m are in at least fp32. With ``mask`` (right
padding), padded positions have i = 0 and f = 1, so they leave the memory as it is; the final
conv_state is read at each sequence's own end; outputs at padded positions are 0.

Permutation spaces: ``heads`` (H > 1 and d a multiple of qkv_blocksize), whole heads — their
E-channels in both halves of proj_up, the conv, q/k/v blocks, learnable_skip, the head norm
and proj_down's columns, their gate rows and the gate columns that read their q, k, v. Input
features: proj_up's columns; output features: proj_down's rows (and bias).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmgraph.blocks.xlstm_parts import HeadLayerNorm, HeadwiseLinear, small_init_, wang_init_
from ssmgraph.ops.causal_conv import causal_conv, conv_step, last_inputs, pad_mask, step_window
from ssmgraph.ops.final_state import mask_lengths
from ssmgraph.ops.linear import Linear
from ssmgraph.ops.mlstm import MLSTMState, mlstm_chunked, mlstm_step, zero_mlstm_state
from ssmgraph.ops.precision import compute_dtype, state_placement
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

State = tuple[Tensor, Tensor, Tensor, Tensor]


def inner_width(d_model: int, proj_factor: float, round_to: int) -> int:
    """E = proj_factor·D rounded up to a multiple of round_to (xlstm's round_proj_up_dim_up)."""
    return round_to * math.ceil(proj_factor * d_model / round_to)


class MLSTMBlock(nn.Module):
    """The mLSTM layer over B×L×D (mixer protocol)."""

    def __init__(
        self,
        d_model: int,
        *,
        heads: int = 4,
        proj_factor: float = 2.0,
        round_to: int = 64,
        conv_kernel: int = 4,
        qkv_blocksize: int = 4,
        bias: bool = False,
        forget_gate: str = "sigmoid",
        chunk: int = 64,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        E = inner_width(d_model, proj_factor, round_to)
        self.d_model, self.inner, self.heads, self.head_dim = d_model, E, heads, E // heads
        self.conv_kernel, self.forget_gate, self.chunk, self.eps = conv_kernel, forget_gate, chunk, eps
        self.proj_up = Linear(d_model, 2 * E, bias=bias)
        self.conv1d = nn.Conv1d(E, E, conv_kernel, groups=E, bias=True)
        self.q_proj = HeadwiseLinear(E, E // qkv_blocksize, bias=bias)
        self.k_proj = HeadwiseLinear(E, E // qkv_blocksize, bias=bias)
        self.v_proj = HeadwiseLinear(E, E // qkv_blocksize, bias=bias)
        self.igate = Linear(3 * E, heads)
        self.fgate = Linear(3 * E, heads)
        self.outnorm = HeadLayerNorm(E, heads)
        self.learnable_skip = nn.Parameter(torch.ones(E))
        self.proj_down = Linear(E, d_model, bias=bias)
        self._init_weights()

    def _init_weights(self) -> None:
        with torch.no_grad():
            for p in (self.proj_up.weight, self.q_proj.weight, self.k_proj.weight, self.v_proj.weight):
                small_init_(p, self.d_model)
            wang_init_(self.proj_down.weight, self.d_model)
            for lin in (self.proj_up, self.proj_down):
                if lin.bias is not None:
                    lin.bias.zero_()
            self.learnable_skip.fill_(1.0)
            self.igate.weight.zero_()
            nn.init.normal_(self.igate.bias, mean=0.0, std=0.1)
            self.fgate.weight.zero_()
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, self.heads))
            self.outnorm.weight.zero_()

    def reset_parameters(self) -> None:
        """Redraw the official initialisation."""
        self.conv1d.reset_parameters()
        self.q_proj.reset_parameters()
        self.k_proj.reset_parameters()
        self.v_proj.reset_parameters()
        self._init_weights()

    def init_state(self, batch: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        """Zero (conv_state (B, E, K), C (B, H, d, d), n (B, H, d), m (B, H))."""
        device, dtype = state_placement(self.proj_up.weight, device, dtype)
        conv = torch.zeros(batch, self.inner, self.conv_kernel, device=device, dtype=dtype)
        return (conv, *zero_mlstm_state(batch, self.heads, self.head_dim, device=device, dtype=compute_dtype(dtype)))

    def _gates(self, q: Tensor, k: Tensor, v: Tensor, cdt: torch.dtype) -> tuple[Tensor, Tensor]:
        """(log i, log f), each (..., H), in the compute dtype (the gate layers under autocast, like the projections)."""
        qkv = torch.cat([q, k, v], dim=-1)
        log_i = self.igate(qkv).to(cdt)
        f = self.fgate(qkv).to(cdt)
        return log_i, (F.logsigmoid(f) if self.forget_gate == "sigmoid" else f)

    def _out(self, h: Tensor, c: Tensor, z: Tensor) -> Tensor:
        """proj_down((HeadLayerNorm(h) + skip ⊙ c) ⊙ silu(z)); ``h (..., H, d)``."""
        y = self.outnorm(h).to(c.dtype) + self.learnable_skip * c
        return self.proj_down(y * F.silu(z))

    def forward(
        self, x: Tensor, *, state: State | None = None, return_state: bool = False, mask: Tensor | None = None
    ) -> Tensor | tuple[Tensor, State]:
        lengths = mask_lengths(mask, x.shape[1])
        xm, z = self.proj_up(x).chunk(2, dim=-1)
        xt = xm.transpose(1, 2)  # (B, E, L)
        window, memory = (None, None) if state is None else (state[0], state[1:])
        c = F.silu(causal_conv(xt, self.conv1d.weight, self.conv1d.bias, window)).transpose(1, 2)
        q, k, v = self.q_proj(c), self.k_proj(c), self.v_proj(xm)
        cdt = compute_dtype(x.dtype)
        log_i, log_f = self._gates(q, k, v, cdt)  # (B, L, H)
        with torch.autocast(device_type=x.device.type, enabled=False):
            if mask is not None:  # i = 0, f = 1: padding leaves the memory as it is
                log_i = log_i.masked_fill(~mask.unsqueeze(-1), -math.inf)
                log_f = log_f.masked_fill(~mask.unsqueeze(-1), 0.0)
            heads = (t.to(cdt).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2) for t in (q, k, v))
            h, memory = mlstm_chunked(
                *heads,
                log_i.transpose(1, 2),
                log_f.transpose(1, 2),
                None if memory is None else tuple(s.to(cdt) for s in memory),
                chunk=self.chunk,
                eps=self.eps,
            )
        out = pad_mask(self._out(h.transpose(1, 2), c, z), mask)
        if not return_state:
            return out
        return out, (last_inputs(xt, window, self.conv_kernel, lengths), *memory)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One token: x_t (B, D) -> (y_t (B, D), new state)."""
        xm, z = self.proj_up(x_t).chunk(2, dim=-1)
        window = step_window(state[0], xm)
        c = F.silu(conv_step(window, self.conv1d.weight, self.conv1d.bias))
        q, k, v = self.q_proj(c), self.k_proj(c), self.v_proj(xm)
        cdt = compute_dtype(x_t.dtype)
        log_i, log_f = self._gates(q, k, v, cdt)
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            q, k, v = (t.to(cdt).unflatten(-1, (self.heads, self.head_dim)) for t in (q, k, v))
            memory: MLSTMState = tuple(s.to(cdt) for s in state[1:])  # type: ignore[assignment]
            h, memory = mlstm_step(q, k, v, log_i, log_f, memory, self.eps)
        return self._out(h, c, z), (window, *memory)


def _shape(in_types: Sequence[TensorType], **args: Any) -> TensorType:
    out = same_as_input(in_types)
    E = inner_width(out.dim, args["proj_factor"], args["round_to"])
    if E < 1:
        raise ShapeError(f"proj_factor {args['proj_factor']} × dim {out.dim} leaves no inner channel")
    if E % args["heads"]:
        raise ShapeError(
            f"inner width {E} (proj_factor × dim, rounded up to {args['round_to']}) is not divisible by heads {args['heads']}"
        )
    if E % args["qkv_blocksize"]:
        raise ShapeError(f"inner width {E} is not divisible by qkv_blocksize {args['qkv_blocksize']}")
    return out


def _build(in_types: Sequence[TensorType], **args: Any) -> MLSTMBlock:
    return MLSTMBlock(in_types[0].dim, **args)


def _spaces(
    in_types: Sequence[TensorType], *, heads: int, proj_factor: float, round_to: int, qkv_blocksize: int, bias: bool, **_: Any
) -> list[PermSpace]:
    D = in_types[0].dim
    E = inner_width(D, proj_factor, round_to)
    d = E // heads
    spaces = [PermSpace(INPUT_SPACE, D, (PermAxis("proj_up.weight", 1),)), PermSpace(OUTPUT_SPACE, D, rows_of("proj_down", bias))]
    if heads > 1 and d % qkv_blocksize == 0:
        axes = [PermAxis("proj_up.weight", 0, group=d, chunks=2), PermAxis("proj_down.weight", 1, group=d)]
        axes += [PermAxis(p, 0, group=d) for p in ("conv1d.weight", "conv1d.bias", "learnable_skip", "outnorm.weight")]
        axes += [PermAxis(f"{m}.weight", 0, group=d // qkv_blocksize) for m in ("q_proj", "k_proj", "v_proj")]
        axes += [PermAxis(f"{g}.{p}", 0) for g in ("igate", "fgate") for p in ("weight", "bias")]
        axes += [PermAxis(f"{g}.weight", 1, group=d, chunks=3) for g in ("igate", "fgate")]
        if bias:
            axes += [PermAxis("proj_up.bias", 0, group=d, chunks=2)]
            axes += [PermAxis(f"{m}.bias", 0, group=d) for m in ("q_proj", "k_proj", "v_proj")]
        spaces.append(PermSpace("heads", heads, tuple(axes), "whole heads (their channels, q/k/v blocks and gates)"))
    return spaces


MLSTM = BlockSpec(
    name="mix.mlstm",
    examples=({}, {"heads": 2, "forget_gate": "exp", "chunk": 3, "bias": True}, {"heads": 1, "proj_factor": 1.0, "round_to": 4}),
    role="mix",
    doc="xLSTM's mLSTM block: up-projection, causal conv, matrix memory with exponential gating (chunked), "
    "head norm, learnable skip, SiLU output gate.",
    params=(
        Param("heads", int, 4, "number of memory heads H (head size d = E / H)", min=1),
        Param("proj_factor", (int, float), 2.0, "up-projection factor: E = proj_factor · dim, rounded up", min=0),
        Param("round_to", int, 64, "round the inner width E up to a multiple of this", min=1),
        Param("conv_kernel", int, 4, "width of the causal depthwise convolution", min=1),
        Param("qkv_blocksize", int, 4, "block size of the block-diagonal q/k/v projections", min=1),
        Param("bias", bool, False, "biases in proj_up, the q/k/v projections and proj_down"),
        Param(
            "forget_gate",
            str,
            "sigmoid",
            "forget gate f = σ(f̃) (the official default) or exp(f̃) (the paper's alternative)",
            choices=("sigmoid", "exp"),
        ),
        Param("chunk", int, 64, "positions per chunk of the parallel form (speed only; results are equal)", min=1),
        Param("eps", float, 1e-6, "added to the normaliser max(|nᵀq|, exp(-m))", min=0.0),
    ),
    factory=_build,
    shape=_shape,
    perm_spaces=_spaces,
    causal=True,
    bidirectional=False,
    step=True,
    reference="Beck et al. 2024, xLSTM: Extended Long Short-Term Memory (§2.3, Fig. 10); NX-AI/xlstm xlstm/blocks/mlstm",
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [MLSTM]
