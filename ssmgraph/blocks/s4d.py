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

Block tail, shared spec pieces and permutation spaces: :mod:`ssmgraph.blocks.conv_ssm`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from ssmgraph.blocks.conv_ssm import block_params, conv_ssm_factory, conv_ssm_spaces
from ssmgraph.blocks.ssm_params import check_ssm_args, register_ssm_param, ssm_params
from ssmgraph.ops.discretize import DISCRETIZATIONS, discretize_diag
from ssmgraph.ops.fftconv import fft_conv
from ssmgraph.ops.final_state import diag_final_state
from ssmgraph.ops.hippo import DIAG_INITS, diag_init, log_uniform
from ssmgraph.ops.precision import complex_dtype, host_init
from ssmgraph.ops.vandermonde import vandermonde
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import BlockSpec, Param, TensorType, same_as_input


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


def _shape(in_types: list[TensorType], **args: Any) -> TensorType:
    check_ssm_args(args["d_state"], args["dt_min"], args["dt_max"])
    return same_as_input(in_types)


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
    factory=conv_ssm_factory(DiagSSM, "init", "disc"),
    shape=_shape,
    perm_spaces=partial(conv_ssm_spaces, dplr=False),
    causal=lambda a: not a["bidirectional"],
    bidirectional=lambda a: a["bidirectional"],
    step=lambda a: not a["bidirectional"],
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [S4D]
