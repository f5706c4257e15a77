"""Discretisations of continuous state-space systems: ZOH and bilinear (diagonal), bilinear (dense);
the initial bias of a selective step size Δ = softplus(δ + dt_bias) (Mamba, Mamba-2, Gated DeltaNet).

Reference: Gu et al., "On the Parameterization and Initialization of Diagonal State Space
Models" (S4D, NeurIPS 2022); state-spaces/s4 ``models/s4/s4.py``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DISCRETIZATIONS = ("zoh", "bilinear")


def discretize_diag(A: Tensor, dt: Tensor, disc: str) -> tuple[Tensor, Tensor, Tensor]:
    """Discretise ``x' = A x + B u`` (``A`` diagonal, complex) with step ``dt`` (broadcasts with A).

    Returns ``(dA, dB_scale, log_dA)`` with ``B̄ = dB_scale * B``:
    zoh: dA = exp(dt A), dB_scale = (exp(dt A) - 1) / A, log_dA = dt A;
    bilinear: dA = (1 + dt A/2) / (1 - dt A/2), dB_scale = dt / (1 - dt A/2), log_dA = log dA.
    """
    dtA = dt * A
    if disc == "zoh":
        dA = torch.exp(dtA)
        return dA, (dA - 1.0) / A, dtA
    if disc == "bilinear":
        dA = (1.0 + dtA / 2) / (1.0 - dtA / 2)
        return dA, dt / (1.0 - dtA / 2), torch.log(dA)
    raise ValueError(f"unknown discretisation {disc!r}; expected one of {DISCRETIZATIONS}")


def bilinear_dense(A: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear discretisation of a dense system: ``A (..., N, N)``, ``B (..., N)``, ``dt (...)``.

    Ā = (I - dt/2 A)^{-1} (I + dt/2 A), B̄ = (I - dt/2 A)^{-1} dt B.
    """
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    half = (dt / 2)[..., None, None]
    lhs = eye - half * A
    dA = torch.linalg.solve(lhs, eye + half * A)
    dB = torch.linalg.solve(lhs, (dt[..., None] * B).unsqueeze(-1)).squeeze(-1)
    return dA, dB


def inverse_softplus(y: Tensor) -> Tensor:
    """softplus⁻¹(y) = y + log(1 - exp(-y)), stable for small y (pytorch/pytorch#72759)."""
    return y + torch.log(-torch.expm1(-y))


def dt_bias_init(
    size: int,
    dt_min: float,
    dt_max: float,
    floor: float,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """softplus⁻¹(Δ₀) with Δ₀ = exp(U[log dt_min, log dt_max]) clamped to ≥ ``floor``, ``size`` draws
    (upstream Mamba's dt bias init, so that softplus(dt_bias) starts log-uniform in the range).
    One ``torch.rand`` of ``dtype`` on ``device`` (None: the defaults)."""
    lo, hi = math.log(dt_min), math.log(dt_max)
    dt = torch.exp(torch.rand(size, dtype=dtype, device=device) * (hi - lo) + lo).clamp(min=floor)
    return inverse_softplus(dt)
