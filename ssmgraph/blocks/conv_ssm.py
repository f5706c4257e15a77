"""The reference S4/S4D block around a convolutional SSM core, and the spec pieces the S4 family shares.

A core (``DiagSSM`` for S4D, ``DPLRSSM`` for S4, a plugin's own such as Liquid-S4's) maps
``u (B, ..., H, L)`` to ``(y (B, ..., c, H, L), final state or None)`` through
``forward(u, x0, lengths, return_state)``, steps with ``init_state``/``step``, and has the
attributes ``channels`` and ``bidirectional``. :class:`ConvSSMBlock` puts the reference block
tail around it; :func:`conv_ssm_factory`, :func:`block_params` and :func:`conv_ssm_spaces` are
the factory, parameters and permutation spaces every S4-family spec shares.

Permutation spaces (S4D and S4): ``modes``, the N/2 stored modes (conjugate pairs move
together, being one stored entry), one permutation for every feature; ``channels``, the c
output channels when c > 1 (rows of C and D, blocks of H columns of out_proj). The H
features are the residual stream, so they are not an internal space: they are the block's
input features (every per-feature SSM parameter, D's columns, out_proj's columns in each
of the c channel blocks); its output features are out_proj's rows and bias (in both GLU
halves).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ssmgraph.ops.final_state import mask_lengths
from ssmgraph.ops.linear import Linear
from ssmgraph.ops.precision import ssm_dtype
from ssmgraph.registry.specs import INPUT_SPACE, OUTPUT_SPACE, Param, PermAxis, PermSpace, TensorType

ACTIVATIONS = ("gelu", "silu", "tanh", "relu", "identity")

CORE_ARGS = ("d_state", "channels", "dt_min", "dt_max", "ssm_lr", "bidirectional")
"""The spec arguments every convolutional SSM core takes (from ``ssm_params`` and :func:`block_params`)."""


def make_activation(name: str) -> nn.Module:
    """The pointwise activation applied after the SSM convolution."""
    return {
        "gelu": nn.GELU,
        "silu": nn.SiLU,
        "tanh": nn.Tanh,
        "relu": nn.ReLU,
        "identity": nn.Identity,
    }[name]()


class ConvSSMBlock(nn.Module):
    """The reference S4/S4D block around a convolutional SSM (``DiagSSM`` or ``DPLRSSM``).

    ``y = SSM(u) + D u`` (per channel c and feature h) → activation → dropout →
    ``Linear(c·H → 2H)`` + GLU (or ``Linear(c·H → H)`` without GLU). The SSM math runs in the
    dtype of the SSM parameters with autocast disabled; the pointwise tail follows autocast.
    """

    def __init__(self, ssm: nn.Module, d_model: int, activation: str, dropout: float, glu: bool) -> None:
        super().__init__()
        self.ssm = ssm
        self.bidirectional = ssm.bidirectional
        self.D = nn.Parameter(torch.randn(ssm.channels, d_model))
        self.activation = make_activation(activation)
        self.dropout = nn.Dropout(dropout)
        width = ssm.channels * d_model
        self.out_proj = Linear(width, 2 * d_model if glu else d_model)
        self.glu = nn.GLU(dim=-1) if glu else nn.Identity()

    def _tail(self, y: Tensor) -> Tensor:
        return self.glu(self.out_proj(self.dropout(self.activation(y))))

    def forward(
        self,
        x: Tensor,
        *,
        state: Tensor | None = None,
        return_state: bool = False,
        mask: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        if self.bidirectional and (state is not None or return_state):
            raise ValueError("a bidirectional SSM has no recurrent state (state/return_state)")
        lengths = mask_lengths(mask, x.shape[1])
        if mask is not None:
            x = x * mask.unsqueeze(-1)  # padded inputs must not reach the anti-causal half
        dtype = ssm_dtype(self.ssm)
        with torch.autocast(device_type=x.device.type, enabled=False):
            u = x.to(dtype).transpose(1, 2)  # (B, H, L)
            y, new_state = self.ssm(u, state, lengths, return_state)
            y = y + self.D.to(dtype).unsqueeze(-1) * u.unsqueeze(1)  # (B, c, H, L)
            y = y.flatten(1, 2).transpose(1, 2)  # (B, L, c·H), channel-major as the reference
        y = self._tail(y.to(x.dtype))
        return (y, new_state) if return_state else y

    def init_state(self, batch: int, *, device=None, dtype=None) -> Tensor:
        if self.bidirectional:
            raise ValueError("a bidirectional SSM cannot be stepped")
        return self.ssm.init_state((batch,), device=device, dtype=dtype)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        if self.bidirectional:
            raise ValueError("a bidirectional SSM cannot be stepped")
        dtype = ssm_dtype(self.ssm)
        with torch.autocast(device_type=x_t.device.type, enabled=False):
            u = x_t.to(dtype)
            y, state = self.ssm.step(u, state)
            y = (y + self.D.to(dtype) * u.unsqueeze(1)).flatten(1)
        return self._tail(y.to(x_t.dtype)), state


def block_params() -> tuple[Param, ...]:
    """Parameters of the reference S4/S4D block tail."""
    return (
        Param("channels", int, 1, "output channels c per feature (the SSM maps 1 → c dims)", min=1),
        Param("bidirectional", bool, False, "add an anti-causal kernel (non-causal; no step or state)"),
        Param("activation", str, "gelu", "activation after the convolution", choices=ACTIVATIONS),
        Param("glu", bool, True, "output Linear(c·H → 2H) + GLU (else Linear(c·H → H))"),
        Param("dropout", float, 0.0, "dropout after the activation", min=0.0, max=0.999),
    )


def conv_ssm_factory(core: Callable[..., nn.Module], *core_args: str) -> Callable[..., ConvSSMBlock]:
    """The factory of an S4-family spec: ``core(H, **args)``, given :data:`CORE_ARGS` and the
    spec's own ``core_args``, inside the reference block tail."""

    def factory(in_types: Sequence[TensorType], **args: Any) -> ConvSSMBlock:
        H = in_types[0].dim
        ssm = core(H, **{name: args[name] for name in (*CORE_ARGS, *core_args)})
        return ConvSSMBlock(ssm, H, args["activation"], args["dropout"], args["glu"])

    return factory


def ssm_feature_axes(prefix: str, *, dplr: bool) -> tuple[PermAxis, ...]:
    """The axes of a DiagSSM's (``dplr``: DPLRSSM's) parameters indexed by its H features."""
    axes = [PermAxis(f"{prefix}{p}", 0) for p in ("log_dt", "log_A_real", "A_imag", "B")]
    axes.append(PermAxis(f"{prefix}C", 1))  # (c', H, N/2, 2)
    if dplr:
        axes.append(PermAxis(f"{prefix}P", 1))  # (R, H, N/2, 2)
    return tuple(axes)


def ssm_mode_space(prefix: str, d_state: int, *, dplr: bool) -> PermSpace:
    """The N/2 stored modes of a DiagSSM or DPLRSSM: a diagonal (plus low-rank) state matrix
    permuted alike in its rows and columns, with B and C, computes the same kernel."""
    axes = [PermAxis(f"{prefix}{p}", 1) for p in ("log_A_real", "A_imag", "B")]
    axes.append(PermAxis(f"{prefix}C", 2))
    if dplr:
        axes.append(PermAxis(f"{prefix}P", 2))
    return PermSpace("modes", d_state // 2, tuple(axes), "stored (complex) state modes")


def conv_ssm_spaces(
    in_types: Sequence[TensorType], *, d_state: int, channels: int, bidirectional: bool, dplr: bool, glu: bool, **_: Any
) -> list[PermSpace]:
    """The spaces of the S4/S4D block: the SSM's modes, its output channels when c > 1, and
    its input (the H features of the SSM) and output features. A spec's ``perm_spaces`` is
    this with ``dplr`` bound (it ignores the spec's other arguments)."""
    H = in_types[0].dim
    spaces = [ssm_mode_space("ssm.", d_state, dplr=dplr)]
    if channels > 1:
        axes = (PermAxis("ssm.C", 0, chunks=2 if bidirectional else 1), PermAxis("D", 0), PermAxis("out_proj.weight", 1, group=H))
        spaces.append(PermSpace("channels", channels, axes, "SSM output channels"))
    reads = (*ssm_feature_axes("ssm.", dplr=dplr), PermAxis("D", 1), PermAxis("out_proj.weight", 1, chunks=channels))
    halves = 2 if glu else 1  # GLU gates the first half of out_proj's rows with the second
    writes = (PermAxis("out_proj.weight", 0, chunks=halves), PermAxis("out_proj.bias", 0, chunks=halves))
    return [*spaces, PermSpace(INPUT_SPACE, H, reads), PermSpace(OUTPUT_SPACE, H, writes)]
