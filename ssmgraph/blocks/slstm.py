"""``mix.slstm``: the sLSTM layer of xLSTM, a scalar-memory LSTM with exponential gating and
block-diagonal (per-head) recurrent matrices.

Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp, Klambauer, Brandstetter, Hochreiter 2024,
"xLSTM: Extended Long Short-Term Memory" (arXiv 2405.04517), §2.2 (sLSTM, Eqs. 8-17), Fig. 9
(the post-up-projection sLSTM block: its FFN is a separate node, see blueprints/xlstm.yaml),
appendix A.2 (stabilisation); following the official NX-AI/xlstm ``sLSTMLayer`` and the
vanilla cell ``slstm_forward_pointwise``. With H heads of d = D/H units::

    c      = silu(causal depthwise conv(u))              (conv_kernel 0: c = u)
    ĩ, f̃   = igate(c), fgate(c);  z̃, õ = zgate(u), ogate(u)   block-diagonal, one block per head
    y_t    = sLSTM(ĩ, f̃, z̃, õ; R y_{t-1} + b)             ssmgraph.ops.slstm, per head
    out    = HeadLayerNorm(y)                             per-head layer norm, weight 1 + w

The cell (ops/slstm.py): c_t = f_t c_{t-1} + i_t tanh(z̃_t), n_t = f_t n_{t-1} + i_t,
y_t = σ(õ_t) c_t / n_t with i_t = exp(ĩ_t), f_t = σ(f̃_t) (or exp(f̃_t)), stabilised by m_t. The
recurrence is sequential: the four input projections are computed for the whole sequence
first, then each position costs one batched (H, B, d) × (H, d, 4d) matmul and pointwise ops.

Initialisation (official): the gate projections N(0, 2/(5D)); R = 0 (``recurrent_weight_init
= 'zeros'``); bias 0 except the forget gate's, -(-5 + 12 (j/(d-1))^0.3) for unit j of each head
("powerlaw_blockdependent" of a first block); the head norm's weight 0; the conv PyTorch's.

State: ``(conv_state (B, D, K), y, c, n, m (B, H, d) each)``, the memory in at least fp32.
With ``mask`` (right padding) padded positions keep the state; outputs there are 0.

Permutation spaces: none. The gate projections are block-diagonal over the input features and
the output is the cells themselves (no output projection), so the input and output features
are tied to heads: no permutation of them alone keeps the block's function, and the feature
spaces around it stay fixed (docs/merging.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmgraph.blocks.xlstm_parts import HeadLayerNorm, HeadwiseLinear, small_init_
from ssmgraph.ops.causal_conv import causal_conv, conv_step, last_inputs, pad_mask, step_window
from ssmgraph.ops.final_state import mask_lengths
from ssmgraph.ops.precision import compute_dtype, state_placement
from ssmgraph.ops.slstm import SLSTMState, slstm_cell, slstm_scan, zero_slstm_state
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import BlockSpec, Param, PermSpace, ShapeError, TensorType, same_as_input

State = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def forget_bias_init(d: int) -> Tensor:
    """The official "powerlaw_blockdependent" forget-gate bias of a first block: 5 down to -7."""
    ramp = torch.arange(d, dtype=torch.float64) / max(d - 1, 1)
    return -(-5.0 + 12.0 * ramp**0.3)


class SLSTMBlock(nn.Module):
    """The sLSTM layer over B×L×D (mixer protocol)."""

    def __init__(self, d_model: int, *, heads: int = 4, conv_kernel: int = 4, forget_gate: str = "sigmoid") -> None:
        super().__init__()
        self.d_model, self.heads, self.head_dim = d_model, heads, d_model // heads
        self.conv_kernel, self.exp_forget = conv_kernel, forget_gate == "exp"
        self.conv1d = nn.Conv1d(d_model, d_model, conv_kernel, groups=d_model, bias=True) if conv_kernel else None
        self.igate = HeadwiseLinear(d_model, heads)
        self.fgate = HeadwiseLinear(d_model, heads)
        self.zgate = HeadwiseLinear(d_model, heads)
        self.ogate = HeadwiseLinear(d_model, heads)
        self.recurrent_kernel = nn.Parameter(torch.zeros(heads, self.head_dim, 4, self.head_dim))
        self.bias = nn.Parameter(torch.zeros(heads, 4, self.head_dim))
        self.group_norm = HeadLayerNorm(d_model, heads)
        self._init_weights()

    def _init_weights(self) -> None:
        with torch.no_grad():
            for gate in (self.igate, self.fgate, self.zgate, self.ogate):
                small_init_(gate.weight, self.d_model)
            self.recurrent_kernel.zero_()
            self.bias.zero_()
            self.bias[:, 1] = forget_bias_init(self.head_dim).to(self.bias.dtype)
            self.group_norm.weight.zero_()

    def reset_parameters(self) -> None:
        """Redraw the official initialisation."""
        if self.conv1d is not None:
            self.conv1d.reset_parameters()
        self._init_weights()

    def init_state(self, batch: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        """Zero (conv_state (B, D, K), y, c, n, m (B, H, d))."""
        device, dtype = state_placement(self.bias, device, dtype)
        conv = torch.zeros(batch, self.d_model, self.conv_kernel, device=device, dtype=dtype)
        return (conv, *zero_slstm_state(batch, self.heads, self.head_dim, device=device, dtype=compute_dtype(dtype)))

    def _preactivations(self, u: Tensor, c: Tensor, cdt: torch.dtype) -> Tensor:
        """W x + b for gates i, f, z, o: (..., H, 4, d) in the compute dtype."""
        gates = (self.igate(c), self.fgate(c), self.zgate(u), self.ogate(u))
        wx = torch.stack([g.unflatten(-1, (self.heads, self.head_dim)) for g in gates], dim=-2)
        return wx.to(cdt) + self.bias.to(cdt)

    def forward(
        self, x: Tensor, *, state: State | None = None, return_state: bool = False, mask: Tensor | None = None
    ) -> Tensor | tuple[Tensor, State]:
        B, L, _ = x.shape
        lengths = mask_lengths(mask, L)
        xt = x.transpose(1, 2)
        window = None if state is None else state[0]
        if self.conv1d is None:
            c = x
        else:
            c = F.silu(causal_conv(xt, self.conv1d.weight, self.conv1d.bias, window)).transpose(1, 2)
        cdt = compute_dtype(x.dtype)
        wx = self._preactivations(x, c, cdt)  # the projections under autocast, the recurrence without
        with torch.autocast(device_type=x.device.type, enabled=False):
            if state is None:
                memory = zero_slstm_state(B, self.heads, self.head_dim, device=x.device, dtype=cdt)
            else:
                memory = tuple(s.to(cdt) for s in state[1:])
            y, memory = slstm_scan(wx, self.recurrent_kernel.to(cdt), memory, mask, self.exp_forget)  # type: ignore[arg-type]
            out = self.group_norm(y).to(x.dtype)
        out = pad_mask(out, mask)
        if not return_state:
            return out
        return out, (last_inputs(xt, window, self.conv_kernel, lengths), *memory)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One token: x_t (B, D) -> (y_t (B, D), new state)."""
        B = x_t.shape[0]
        if self.conv1d is None:
            window, c = state[0], x_t
        else:
            window = step_window(state[0], x_t)
            c = F.silu(conv_step(window, self.conv1d.weight, self.conv1d.bias))
        cdt = compute_dtype(x_t.dtype)
        wx = self._preactivations(x_t, c, cdt)
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            memory: SLSTMState = tuple(s.to(cdt) for s in state[1:])  # type: ignore[assignment]
            R = self.recurrent_kernel.to(cdt).reshape(self.heads, self.head_dim, 4 * self.head_dim)
            rec = torch.bmm(memory[0].transpose(0, 1), R).transpose(0, 1).reshape(B, self.heads, 4, self.head_dim)
            memory = slstm_cell(wx + rec, memory, self.exp_forget)
            out = self.group_norm(memory[0]).to(x_t.dtype)
        return out, (window, *memory)


def _shape(in_types: Sequence[TensorType], **args: Any) -> TensorType:
    out = same_as_input(in_types)
    if out.dim % args["heads"]:
        raise ShapeError(f"dim {out.dim} is not divisible by heads {args['heads']}")
    return out


def _build(in_types: Sequence[TensorType], **args: Any) -> SLSTMBlock:
    return SLSTMBlock(in_types[0].dim, **args)


def _spaces(in_types: Sequence[TensorType], **_: Any) -> list[PermSpace]:
    return []  # features tied to heads, no output projection: see the module doc


SLSTM = BlockSpec(
    name="mix.slstm",
    examples=({}, {"heads": 2, "conv_kernel": 0, "forget_gate": "exp"}, {"heads": 1}),
    role="mix",
    doc="xLSTM's sLSTM layer: causal conv, scalar memory with exponential gating and per-head recurrent "
    "matrices (sequential), head norm.",
    params=(
        Param("heads", int, 4, "number of heads H; recurrent matrices are block-diagonal, one d × 4d block per head", min=1),
        Param("conv_kernel", int, 4, "width of the causal depthwise conv feeding the i and f gates (0: none)", min=0),
        Param(
            "forget_gate",
            str,
            "sigmoid",
            "forget gate f = σ(f̃) (the official default) or exp(f̃) (the paper's alternative)",
            choices=("sigmoid", "exp"),
        ),
    ),
    factory=_build,
    shape=_shape,
    perm_spaces=_spaces,
    causal=True,
    bidirectional=False,
    step=True,
    reference="Beck et al. 2024, xLSTM: Extended Long Short-Term Memory (§2.2, Fig. 9); NX-AI/xlstm xlstm/blocks/slstm",
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [SLSTM]
