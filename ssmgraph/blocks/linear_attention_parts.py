"""What the linear-attention mixers (``mix.gla``, ``mix.deltanet``, ``mix.gated_deltanet``) share.

Following fla (flash-linear-attention, ``fla/layers``): separate ``q_proj``, ``k_proj``,
``v_proj`` projections, each optionally followed by a short causal depthwise convolution
(fla's ``ShortConvolution``: ``q_conv1d``, ``k_conv1d``, ``v_conv1d``, weight (D, 1, K)), a
per-head RMS norm of the output with an optional SiLU gate (fla's ``RMSNorm`` /
``FusedRMSNormGated``, computed in fp32 with one weight of size head_v_dim shared by the
heads), and ``o_proj``.

State of a mixer: ``(conv_states, S)``; conv_states holds (B, D, K) for each of q, k, v
(the last K pre-conv inputs, oldest first, as mix.mamba's conv_state) or is empty without
short convolutions; S (B, H, K, V) is the recurrent state in at least fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmgraph.ops.causal_conv import conv_step, last_inputs, pad_mask, padded_inputs, step_window
from ssmgraph.ops.final_state import mask_lengths
from ssmgraph.ops.linear import Linear
from ssmgraph.ops.precision import compute_dtype, state_placement
from ssmgraph.registry.specs import INPUT_SPACE, OUTPUT_SPACE, Param, PermAxis, PermSpace, ShapeError

ConvStates = tuple[Tensor, ...]
LinearAttentionState = tuple[ConvStates, Tensor]


def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """x / sqrt(Σ x² + eps) over the last dimension (fla's ``l2norm``)."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def split_heads(t: Tensor, heads: int) -> Tensor:
    """(B, L, H·d) -> (B, H, L, d)."""
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)


class ShortConv(nn.Conv1d):
    """Causal depthwise convolution over (B, L, D) with a carried input window (fla's ShortConvolution)."""

    def __init__(self, channels: int, kernel: int, bias: bool):
        super().__init__(channels, channels, kernel, groups=channels, bias=bias)

    def run(self, x: Tensor, state: Tensor | None, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """(pre-activation output (B, L, D), the window after each sequence's last valid input (B, D, K));
        ``lengths (B,)``: the valid inputs of each sequence (None: all)."""
        kernel, xt = self.kernel_size[0], x.transpose(1, 2)
        y = F.conv1d(padded_inputs(xt, state, kernel), self.weight, self.bias, groups=self.groups).transpose(1, 2)
        return y, last_inputs(xt, state, kernel, lengths)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One input (B, D) -> (pre-activation output (B, D), new window)."""
        state = step_window(state, x_t)
        return conv_step(state, self.weight, self.bias), state


class GatedHeadRMSNorm(nn.Module):
    """RMS norm over each head's features, times ``weight`` (head_v_dim), optionally times silu(gate); in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, o: Tensor, gate: Tensor | None = None) -> Tensor:
        cdt = compute_dtype(o.dtype)
        x = o.to(cdt)
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(cdt)
        if gate is not None:
            y = y * F.silu(gate.to(cdt))
        return y


class QKVMixer(nn.Module):
    """The q/k/v projections with optional short convolutions and the state plumbing of the three mixers."""

    def __init__(
        self,
        dim: int,
        key_dim: int,
        value_dim: int,
        heads: int,
        *,
        short_conv: bool,
        conv_size: int,
        conv_bias: bool,
        output_gate: bool,
        norm_eps: float,
    ):
        super().__init__()
        self.dim, self.key_dim, self.value_dim, self.heads = dim, key_dim, value_dim, heads
        self.head_k_dim, self.head_v_dim = key_dim // heads, value_dim // heads
        self.short_conv = short_conv
        self.q_proj = Linear(dim, key_dim, bias=False)
        self.k_proj = Linear(dim, key_dim, bias=False)
        self.v_proj = Linear(dim, value_dim, bias=False)
        if short_conv:
            self.q_conv1d = ShortConv(key_dim, conv_size, conv_bias)
            self.k_conv1d = ShortConv(key_dim, conv_size, conv_bias)
            self.v_conv1d = ShortConv(value_dim, conv_size, conv_bias)
        self.output_gate = output_gate
        if output_gate:
            self.g_proj = Linear(dim, value_dim, bias=False)
        self.o_norm = GatedHeadRMSNorm(self.head_v_dim, norm_eps)
        self.o_proj = Linear(value_dim, dim, bias=False)

    def _convs(self) -> tuple[ShortConv, ...]:
        return (self.q_conv1d, self.k_conv1d, self.v_conv1d) if self.short_conv else ()

    def _qkv(self, x: Tensor, conv_states: ConvStates | None, mask: Tensor | None) -> tuple[list[Tensor], ConvStates]:
        """[q, k, v] (B, L, ·) through the convolutions when there are any (pre-activation), and the new conv states."""
        qkv = [self.q_proj(x), self.k_proj(x), self.v_proj(x)]
        if not self.short_conv:
            return qkv, ()
        states, lengths = conv_states or (None, None, None), mask_lengths(mask, x.shape[1])
        done = [conv.run(t, s, lengths) for conv, t, s in zip(self._convs(), qkv, states)]
        return [y for y, _ in done], tuple(s for _, s in done)

    def _qkv_step(self, x_t: Tensor, conv_states: ConvStates) -> tuple[list[Tensor], ConvStates]:
        qkv = [self.q_proj(x_t), self.k_proj(x_t), self.v_proj(x_t)]
        if not self.short_conv:
            return qkv, ()
        done = [conv.step(t, s) for conv, t, s in zip(self._convs(), qkv, conv_states)]
        return [y for y, _ in done], tuple(s for _, s in done)

    def init_state(
        self, batch: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> LinearAttentionState:
        """Zero conv windows (B, D, K) and a zero recurrent state (B, H, K, V) in at least fp32."""
        device, dtype = state_placement(self.q_proj.weight, device, dtype)
        convs = tuple(torch.zeros(batch, c.in_channels, c.kernel_size[0], device=device, dtype=dtype) for c in self._convs())
        s = torch.zeros(batch, self.heads, self.head_k_dim, self.head_v_dim, device=device, dtype=compute_dtype(dtype))
        return convs, s

    def _finish(self, o: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Per-head norm (and gate) of o (B, L, H, V) or (B, H, V), o_proj in the input's dtype; zero at padding."""
        gate = self.g_proj(x).unflatten(-1, (self.heads, -1)) if self.output_gate else None
        return pad_mask(self.o_proj(self.o_norm(o, gate).flatten(-2).to(x.dtype)), mask)


def check_heads(name: str, heads: int, key_dim: int, value_dim: int) -> None:
    """Key and value widths that split into ``heads`` heads (a ShapeError otherwise)."""
    for what, width in (("key", key_dim), ("value", value_dim)):
        if width < heads or width % heads:
            raise ShapeError(f"{name}: the {what} width {width} does not split into {heads} heads")


def conv_params(short_conv: bool) -> tuple[Param, ...]:
    return (
        Param("short_conv", bool, short_conv, "short causal depthwise convolutions on q, k and v (fla's use_short_conv)"),
        Param("conv_size", int, 4, "kernel width of the short convolutions", min=1),
        Param("conv_bias", bool, False, "bias in the short convolutions"),
    )


HEADS = Param("heads", int, 4, "number of heads; must divide the key and value widths", min=1)
CHUNK_PARAM = Param("chunk_size", int, 64, "positions per chunk of the chunked (training) form", min=1)
NORM_EPS = Param("norm_eps", float, 1e-5, "epsilon of the per-head output RMS norm", min=0.0)


def head_spaces(
    *,
    heads: int,
    key_dim: int,
    value_dim: int,
    dim: int,
    short_conv: bool,
    conv_bias: bool,
    output_gate: bool,
    key_rows: Sequence[str] = (),
    head_entries: Sequence[str] = (),
    inputs: Sequence[str] = (),
) -> list[PermSpace]:
    """Heads, the key features within a head and the value features within a head (each the same
    in every head), input and output features. ``key_rows``: further weights whose rows are key
    features (head-major); ``head_entries``: one row/entry per head; ``inputs``: further weights
    that read the input."""
    hk, hv = key_dim // heads, value_dim // heads
    key_params = ["q_proj.weight", "k_proj.weight", *key_rows]
    value_params = ["v_proj.weight"] + (["g_proj.weight"] if output_gate else [])
    if short_conv:
        key_params += ["q_conv1d.weight", "k_conv1d.weight"] + (["q_conv1d.bias", "k_conv1d.bias"] if conv_bias else [])
        value_params += ["v_conv1d.weight"] + (["v_conv1d.bias"] if conv_bias else [])
    head_axes = [PermAxis(p, 0, group=hk) for p in key_params] + [PermAxis(p, 0, group=hv) for p in value_params]
    head_axes += [PermAxis(p, 0) for p in head_entries] + [PermAxis("o_proj.weight", 1, group=hv)]
    key_axes = [PermAxis(p, 0, chunks=heads) for p in key_params]
    value_axes = [PermAxis(p, 0, chunks=heads) for p in value_params]
    value_axes += [PermAxis("o_norm.weight", 0), PermAxis("o_proj.weight", 1, chunks=heads)]
    reads = ["q_proj.weight", "k_proj.weight", "v_proj.weight", *inputs] + (["g_proj.weight"] if output_gate else [])
    return [
        PermSpace("heads", heads, tuple(head_axes), "heads, which run independently and are concatenated before o_proj"),
        PermSpace("key", hk, tuple(key_axes), "key features within a head (the same permutation in every head)"),
        PermSpace("value", hv, tuple(value_axes), "value features within a head (the same permutation in every head)"),
        PermSpace(INPUT_SPACE, dim, tuple(PermAxis(p, 1) for p in reads)),
        PermSpace(OUTPUT_SPACE, dim, (PermAxis("o_proj.weight", 0),)),
    ]
