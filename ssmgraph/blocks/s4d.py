"""S4D: the diagonal structured state-space layer (block ``mix.s4d``).

Per channel h = 1..H, a diagonal SSM with N/2 complex modes (conjugate pairs implied)::

    x'(t) = A x(t) + B u(t),  y(t) = C x(t) + D u(t),   A = -exp(log_A_real) - i A_imag

discretised with step Δ_h = exp(log_dt_h) by ZOH (default) or bilinear, and computed as a
causal convolution with the kernel ``K_l = 2 Re Σ_n C_n B̄_n Ā_n^l`` (a Vandermonde
product, FFT convolution of length 2L). The block is the reference S4D layer:
``y = K * u + D u → GELU → dropout → Linear(c·H → 2H) → GLU``.

References: Gu, Gupta, Goel, Ré, "On the Parameterization and Initialization of Diagonal
State Space Models", NeurIPS 2022 (arXiv 2206.11893). Code: state-spaces/s4
``models/s4/s4d.py`` (minimal S4D) and ``models/s4/s4.py`` (``SSMKernelDiag``, ``FFTConv``).
Unlike the minimal file, ``B`` is a trainable parameter (as in ``SSMKernelDiag``), which
``init='legs'`` needs.

Permutation spaces (S4D and S4): ``modes``, the N/2 stored modes (conjugate pairs move
together, being one stored entry), one permutation for every feature; ``channels``, the c
output channels when c > 1 (rows of C and D, blocks of H columns of out_proj). The H
features are the residual stream, so they are not an internal space: they are the block's
input features (every per-feature SSM parameter, D's columns, out_proj's columns in each
of the c channel blocks); its output features are out_proj's rows and bias (in both GLU
halves).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ssmgraph.blocks.linear import Linear
from ssmgraph.blocks.ssm_kernels import (
    DIAG_INITS,
    DISCRETIZATIONS,
    complex_dtype,
    diag_final_state,
    diag_init,
    host_init,
    discretize_diag,
    fft_conv,
    log_uniform,
    mask_lengths,
    register_ssm_param,
    ssm_dtype,
    vandermonde,
)
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import INPUT_SPACE, OUTPUT_SPACE, BlockSpec, Param, PermAxis, PermSpace, ShapeError, TensorType, same_as_input

ACTIVATIONS = ("gelu", "silu", "tanh", "relu", "identity")


def make_activation(name: str) -> nn.Module:
    """The pointwise activation applied after the SSM convolution."""
    return {
        "gelu": nn.GELU,
        "silu": nn.SiLU,
        "tanh": nn.Tanh,
        "relu": nn.ReLU,
        "identity": nn.Identity,
    }[name]()


class DiagSSM(nn.Module):
    """H independent diagonal SSMs (the S4D kernel), mapping (..., H, L) to (..., c, H, L).

    Parameters: ``log_dt (H)``, ``log_A_real (H, N/2)``, ``A_imag (H, N/2)``, ``B (H, N/2, 2)``
    (complex as real pairs; these four get ``ssm_lr`` and no weight decay), and
    ``C (c', H, N/2, 2)`` with c' = channels (twice that when bidirectional). The state is
    complex ``(..., H, N/2)``; outputs are ``2 Re(C x)``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        channels: int = 1,
        init: str = "lin",
        disc: str = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        ssm_lr: float = 1e-3,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        if disc not in DISCRETIZATIONS:
            raise ValueError(f"unknown discretisation {disc!r}")
        self.H, self.N2, self.channels = d_model, d_state // 2, channels
        self.disc, self.bidirectional = disc, bidirectional
        with host_init() as device:
            A, B = (t.to(device) for t in diag_init(init, d_state))
        dtype = torch.get_default_dtype()
        register_ssm_param(self, "log_dt", log_uniform((d_model,), dt_min, dt_max).to(dtype), ssm_lr)
        log_re = torch.log((-A.real).clamp(min=1e-4)).expand(d_model, -1)
        register_ssm_param(self, "log_A_real", log_re.to(dtype).clone(), ssm_lr)
        register_ssm_param(self, "A_imag", (-A.imag).expand(d_model, -1).to(dtype).clone(), ssm_lr)
        B = torch.view_as_real(B.expand(d_model, -1).clone())
        register_ssm_param(self, "B", B.to(dtype).contiguous(), ssm_lr)
        c_total = channels * (2 if bidirectional else 1)
        C = torch.randn(c_total, d_model, self.N2, dtype=complex_dtype(dtype))
        self.C = nn.Parameter(torch.view_as_real(C).contiguous())

    def discretized(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(log Ā (H, N/2), Ā, B̄, C (c', H, N/2))`` from the current parameters."""
        dt = torch.exp(self.log_dt).unsqueeze(-1)
        A = torch.complex(-torch.exp(self.log_A_real), -self.A_imag)
        dA, dB_scale, log_dA = discretize_diag(A, dt, self.disc)
        return log_dA, dA, dB_scale * torch.view_as_complex(self.B), torch.view_as_complex(self.C)

    def kernel(self, L: int) -> Tensor:
        """The convolution kernel ``K (c', H, L)``, ``K_l = 2 Re Σ_n C_n B̄_n Ā_n^l``."""
        log_dA, _, dB, C = self.discretized()
        return 2 * vandermonde(C * dB, log_dA, L).real

    def forward(
        self,
        u: Tensor,
        x0: Tensor | None = None,
        lengths: Tensor | None = None,
        return_state: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``u (B, ..., H, L)`` real → ``(y (B, ..., c, H, L), final state or None)`` (no D term).

        With ``x0`` the initial state's response ``2 Re(C Ā^(t+1) x0)`` is added; the final
        state is the state after the last valid token (``lengths``).
        """
        L = u.shape[-1]
        log_dA, dA, dB, C = self.discretized()
        k = 2 * vandermonde(C * dB, log_dA, L).real
        c = self.channels
        if self.bidirectional:
            y = fft_conv(u.unsqueeze(-3), k[:c], k[c:])
        else:
            y = fft_conv(u.unsqueeze(-3), k)
        if x0 is not None:
            y = y + 2 * vandermonde(C[:c] * (dA * x0).unsqueeze(-3), log_dA, L).real
        state = diag_final_state(u, log_dA, dB, x0, lengths) if return_state else None
        return y, state

    def init_state(self, batch_shape: tuple[int, ...], device=None, dtype=None) -> Tensor:
        dtype = complex_dtype(dtype or self.C.dtype)
        return torch.zeros(*batch_shape, self.H, self.N2, dtype=dtype, device=device or self.C.device)

    def step(self, u: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """One step: ``u (..., H)``, state ``(..., H, N/2)`` → ``(y (..., c, H), new state)``."""
        _, dA, dB, C = self.discretized()
        x = dA * x + dB * u.unsqueeze(-1)
        y = 2 * torch.einsum("chn,...hn->...ch", C[: self.channels], x).real
        return y, x


class ConvSSMBlock(nn.Module):
    """The reference S4/S4D block around a convolutional SSM (``DiagSSM`` or ``DPLRSSM``).

    ``y = SSM(u) + D u`` (per channel c and feature h) → activation → dropout →
    ``Linear(c·H → 2H)`` + GLU (or ``Linear(c·H → H)`` without GLU). The SSM math runs in the
    dtype of the SSM parameters with autocast disabled; the pointwise tail follows autocast.
    """

    def __init__(
        self, ssm: nn.Module, d_model: int, activation: str, dropout: float, glu: bool
    ) -> None:
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
    in_types: list[TensorType], *, d_state: int, channels: int, bidirectional: bool, dplr: bool, glu: bool
) -> list[PermSpace]:
    """The spaces of the S4/S4D block: the SSM's modes, its output channels when c > 1, and
    its input (the H features of the SSM) and output features."""
    H = in_types[0].dim
    spaces = [ssm_mode_space("ssm.", d_state, dplr=dplr)]
    if channels > 1:
        axes = (PermAxis("ssm.C", 0, chunks=2 if bidirectional else 1), PermAxis("D", 0), PermAxis("out_proj.weight", 1, group=H))
        spaces.append(PermSpace("channels", channels, axes, "SSM output channels"))
    reads = (*ssm_feature_axes("ssm.", dplr=dplr), PermAxis("D", 1), PermAxis("out_proj.weight", 1, chunks=channels))
    halves = 2 if glu else 1  # GLU gates the first half of out_proj's rows with the second
    writes = (PermAxis("out_proj.weight", 0, chunks=halves), PermAxis("out_proj.bias", 0, chunks=halves))
    return [*spaces, PermSpace(INPUT_SPACE, H, reads), PermSpace(OUTPUT_SPACE, H, writes)]


def check_ssm_args(d_state: int, dt_min: float, dt_max: float) -> None:
    """Shared parameter checks of the SSM shape rules."""
    if d_state % 2:
        raise ShapeError(f"d_state {d_state} must be even (N/2 conjugate-pair modes are stored)")
    if dt_min <= 0:
        raise ShapeError(f"dt_min must be positive (Δ is drawn log-uniformly), got {dt_min:g}")
    if dt_min > dt_max:
        raise ShapeError(f"dt_min {dt_min:g} is larger than dt_max {dt_max:g}")


def ssm_params(d_state: int = 64) -> tuple[Param, ...]:
    """Parameters shared by the S4-family specs."""
    return (
        Param("d_state", int, d_state, "state size N (N/2 complex conjugate-pair modes are stored)", min=2),
        Param("dt_min", float, 1e-3, "smallest initial step size Δ (log-uniform init)", min=0.0),
        Param("dt_max", float, 1e-1, "largest initial step size Δ (log-uniform init)", min=0.0),
        Param("ssm_lr", float, 1e-3, "learning rate of the SSM parameters (Δ, A, B), no weight decay; 0 freezes them", min=0.0),
    )


def block_params() -> tuple[Param, ...]:
    """Parameters of the reference S4/S4D block tail."""
    return (
        Param("channels", int, 1, "output channels c per feature (the SSM maps 1 → c dims)", min=1),
        Param("bidirectional", bool, False, "add an anti-causal kernel (non-causal; no step or state)"),
        Param("activation", str, "gelu", "activation after the convolution", choices=ACTIVATIONS),
        Param("glu", bool, True, "output Linear(c·H → 2H) + GLU (else Linear(c·H → H))"),
        Param("dropout", float, 0.0, "dropout after the activation", min=0.0, max=0.999),
    )


def _shape(in_types: list[TensorType], **args: Any) -> TensorType:
    check_ssm_args(args["d_state"], args["dt_min"], args["dt_max"])
    return same_as_input(in_types)


def _build(in_types: list[TensorType], **args: Any) -> ConvSSMBlock:
    H = in_types[0].dim
    ssm = DiagSSM(
        H,
        d_state=args["d_state"],
        channels=args["channels"],
        init=args["init"],
        disc=args["disc"],
        dt_min=args["dt_min"],
        dt_max=args["dt_max"],
        ssm_lr=args["ssm_lr"],
        bidirectional=args["bidirectional"],
    )
    return ConvSSMBlock(ssm, H, args["activation"], args["dropout"], args["glu"])


def _spaces(in_types: list[TensorType], **args: Any) -> list[PermSpace]:
    return conv_ssm_spaces(
        in_types, d_state=args["d_state"], channels=args["channels"], bidirectional=args["bidirectional"], dplr=False, glu=args["glu"]
    )


S4D = BlockSpec(
    name="mix.s4d",
    examples=({}, {"init": "legs", "disc": "bilinear", "channels": 2}, {"bidirectional": True}),
    role="mix",
    doc="S4D diagonal state-space layer: Vandermonde kernel, FFT conv, D skip, GELU, Linear+GLU",
    reference="Gu et al. 2022, On the Parameterization and Initialization of Diagonal State Space "
    "Models (S4D); state-spaces/s4 models/s4/s4d.py",
    params=(
        *ssm_params(),
        Param("init", str, "lin", "initialisation of A (S4D-Lin, -Inv, -LegS, -Real)", choices=DIAG_INITS),
        Param("disc", str, "zoh", "discretisation of the continuous SSM (zero-order hold or bilinear)", choices=DISCRETIZATIONS),
        *block_params(),
    ),
    factory=_build,
    shape=_shape,
    perm_spaces=_spaces,
    causal=lambda a: not a["bidirectional"],
    bidirectional=lambda a: a["bidirectional"],
    step=lambda a: not a["bidirectional"],
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [S4D]
