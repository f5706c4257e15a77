"""Diagonal-plus-low-rank (DPLR) state matrices: the dense form and S4's Cauchy/Woodbury kernel.

A DPLR matrix ``A = Λ - P P^*`` is stored as conjugate-pair halves (N/2 modes); :func:`conj_full`
restores the full state. :func:`dplr_kernel` computes S4's bilinear convolution kernel from its
truncated generating function at the roots of unity.

Reference: Gu, Goel, Ré, "Efficiently Modeling Long Sequences with Structured State Spaces"
(S4, ICLR 2022); state-spaces/s4 ``models/s4/s4.py`` (``SSMKernelDPLR``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def conj_full(x: Tensor) -> Tensor:
    """``[x, conj x]`` along the last dim: a half (conjugate-symmetric) state to the full one."""
    return torch.cat([x, x.conj()], dim=-1)


def dplr_dense(Lambda: Tensor, P: Tensor) -> Tensor:
    """The full ``(..., N, N)`` matrix ``diag([Λ, conj Λ]) - Σ_r p_r p_r^*`` with ``p_r = [P_r, conj P_r]``.

    ``Lambda (..., N/2)``, ``P (R, ..., N/2)``.
    """
    p = conj_full(P)
    return torch.diag_embed(conj_full(Lambda)) - torch.einsum("r...m,r...n->...mn", p, p.conj())


def _woodbury(r: Tensor, nb: int, nc: int, beta: Tensor) -> Tensor:
    """``r00 - β r01 (I + β r11)^{-1} r10`` for the stacked resolvent sums ``r (nb+R, nc+R, ...)``.

    ``r[i, j] = Σ_n b_i c_j dt / D`` with rows i over [B..., P...] and columns j over
    [C..., Q...]; the low-rank term of the DPLR resolvent is Σ_{a,a'} r[P_a, C]
    (I + β r[P, Q]^T)^{-1}_{a a'} r[B, Q_a'].
    """
    rank = r.shape[0] - nb
    k = r[:nb, :nc]
    u = r[nb:, :nc]  # u[a, c] = C~_c R dt P_a
    w = r[:nb, nc:]  # w[b, a] = Q_a R dt B_b
    m = r[nb:, nc:].transpose(0, 1)  # m[a, a'] = Q_a R dt P_a'
    if rank == 1:
        return k - beta * u[0][None] * w[:, 0][:, None] / (1 + beta * m[0, 0])
    shape = k.shape
    beta = beta.expand(shape[2:]).flatten()
    u, w, m = u.flatten(2), w.flatten(2), m.flatten(2)
    eye = torch.eye(rank, dtype=r.dtype, device=r.device)
    mat = eye + beta[:, None, None] * m.permute(2, 0, 1)  # (X, R, R)
    sol = torch.linalg.solve(mat, w.permute(2, 1, 0))  # (X, R, nb)
    corr = torch.einsum("acx,xab->bcx", u, sol) * beta
    return k - corr.reshape(shape)


def dplr_kernel(Lambda: Tensor, P: Tensor, B: Tensor, C: Tensor, dt: Tensor, L: int) -> Tensor:
    """The first L terms of S4's bilinear DPLR kernel, from its generating function at roots of unity.

    State matrix ``A = Λ - P P^*`` (conjugate-pair halves: ``Lambda (H, N)``, ``P (R, H, N)``),
    ``B (nb, H, N)``, ``C (nc, H, N)`` holding ``C̃ = C (I - Ā^L)``, ``dt (H,)``. At each node
    ω_k = exp(-2πik/L), k = 0..L/2, the truncated generating function is
    ``C̃ (I - Āω)^{-1} B̄ = C̃ ((1-ω) I - (1+ω)/2 dt A)^{-1} dt B``; with the diagonal
    ``D = (1-ω) - (1+ω)/2 dt Λ`` it is a Cauchy sum over both halves of every conjugate pair
    plus a Woodbury correction for the low-rank term (this form avoids the reference's
    division by 1+ω, which vanishes at the Nyquist node). ``irfft`` gives
    ``K (nb, nc, H, L)`` with ``K_l = C Ā^l B̄``.
    """
    nb, nc = B.shape[0], C.shape[0]
    k = torch.arange(L // 2 + 1, device=Lambda.device, dtype=Lambda.real.dtype)
    omega = torch.exp(-2j * math.pi * k / L)
    alpha, beta = 1 - omega, (1 + omega) / 2  # (M,)
    bs = torch.cat([B, P], dim=0)  # (nb+R, H, N)
    cs = torch.cat([C, P.conj()], dim=0)  # (nc+R, H, N)
    v = bs[:, None] * cs[None] * dt[:, None]  # (nb+R, nc+R, H, N)
    w = dt[:, None] * Lambda  # (H, N)
    v, w = conj_full(v), conj_full(w)
    denom = alpha - beta * w.unsqueeze(-1)  # (H, 2N, M)
    r = torch.einsum("ijhn,hnm->ijhm", v, 1.0 / denom)
    k_f = _woodbury(r, nb, nc, beta)
    return torch.fft.irfft(k_f, n=L)
