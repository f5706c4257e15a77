"""HiPPO matrices, their normal-plus-low-rank (NPLR) form, and the diagonal (S4D) initialisations.

Everything is float64 (complex128), computed once at init: :func:`hippo` (LegS, LegT, FouT),
:func:`rank_correction`, :func:`hippo_normal`, :func:`nplr`, :func:`diag_init`, and the
log-uniform draw of the step size Δ (:func:`log_uniform`).

References: Gu, Goel, Ré, "Efficiently Modeling Long Sequences with Structured State Spaces"
(S4, ICLR 2022); Gu et al., "On the Parameterization and Initialization of Diagonal State
Space Models" (S4D, NeurIPS 2022); Gu et al., "How to Train Your HiPPO" (2022). Reference
code: state-spaces/s4 ``models/s4/s4.py`` and ``src/models/hippo/hippo.py``, lindermanlab/S5
``s5/ssm_init.py``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MEASURES = ("legs", "legt", "fout")


def hippo(measure: str, N: int) -> tuple[Tensor, Tensor]:
    """The HiPPO transition ``(A (N, N), B (N,))`` of a measure, in float64.

    legs: A_nk = -sqrt((2n+1)(2k+1)) (n > k), -(n+1) (n = k), 0 (n < k); B_n = sqrt(2n+1).
    legt: A_nk = -1/2 sqrt((2n+1)(2k+1)) (1 if n >= k else (-1)^(n-k)); B_n = 1/2 sqrt(2n+1)
          (both halved, as in the S4 code, "for timescale correctness").
    fout: 2x2 rotation blocks at frequencies pi*m (states 0 and 1 at frequency 0) minus the
          rank-1 term B B^T; B = (1, 0, sqrt2, 0, sqrt2, 0, ...).
    """
    n = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    if measure == "legs":
        A = -(r[:, None] * r[None, :]) * (n[:, None] > n[None, :]) - torch.diag(n + 1)
        B = r.clone()
    elif measure == "legt":
        row, col = n[:, None], n[None, :]
        sign = torch.where(row >= col, torch.ones_like(row * col), (-1.0) ** (row - col))
        A = -0.5 * r[:, None] * sign * r[None, :]
        B = 0.5 * r
    elif measure == "fout":
        freqs = torch.arange(N // 2, dtype=torch.float64)
        d = torch.stack([torch.zeros(N // 2, dtype=torch.float64), freqs], dim=-1).reshape(-1)[1:N]
        A = math.pi * (torch.diag(d, -1) - torch.diag(d, 1))
        B = torch.zeros(N, dtype=torch.float64)
        B[0::2] = math.sqrt(2)
        B[0] = 1.0
        A = A - B[:, None] * B[None, :]
    else:
        raise ValueError(f"unknown HiPPO measure {measure!r}; expected one of {MEASURES}")
    return A, B


def rank_correction(measure: str, N: int) -> Tensor:
    """Low-rank ``P (rank, N)`` such that ``A + P^T P`` is normal (skew-symmetric plus a multiple of I)."""
    n = torch.arange(N, dtype=torch.float64)
    if measure == "legs":
        return torch.sqrt(n + 0.5)[None]
    if measure == "legt":
        p = torch.sqrt(2 * n + 1) / math.sqrt(2)
        p0, p1 = p.clone(), p.clone()
        p0[0::2] = 0.0
        p1[1::2] = 0.0
        return torch.stack([p0, p1])
    if measure == "fout":
        return hippo("fout", N)[1][None]
    raise ValueError(f"unknown HiPPO measure {measure!r}; expected one of {MEASURES}")


def hippo_normal(measure: str, N: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Diagonalise the normal part ``S = A + P^T P`` of a HiPPO matrix.

    Returns ``(Lambda (N,), V (N, N), P (rank, N), B (N,))`` with ``S = V diag(Lambda) V^*``,
    eigenvalues in ``eigh`` order (ascending imaginary part), ``Re Lambda = mean(diag S)``
    (-1/2 for LegS), and the real ``P``, ``B`` of the measure. Complex128.
    """
    A, B = hippo(measure, N)
    P = rank_correction(measure, N)
    S = A + P.T @ P
    lam_re = torch.diagonal(S).mean()
    lam_im, V = torch.linalg.eigh(S * -1j)
    return lam_re + 1j * lam_im, V, P, B


def nplr(measure: str, N: int, B_clip: float | None = 2.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normal-plus-low-rank form of a HiPPO matrix with conjugate symmetry (as in S4).

    Returns ``(W (N/2,), P (rank, N/2), B (N/2,), V (N, N/2))`` such that, with
    ``V_full = [V, conj V]``, the real HiPPO pair is ``A = V_full (diag[W, conj W] - P_f P_f^*)
    V_full^*`` and ``B = V_full [B, conj B]`` (``P_f = [P, conj P]``). Only the eigenvalues with
    negative imaginary part are kept; FouT's zero pair (states 0 and 1) is assigned by hand,
    as in the reference. ``Im B`` is clipped to ``±B_clip``.
    """
    lam, V, P, B = hippo_normal(measure, N)
    idx = torch.argsort(lam.imag)
    lam, V = lam[idx][: N // 2], V[:, idx][:, : N // 2].clone()
    if lam[-1].abs() < 1e-4:  # FouT: one conjugate pair at frequency 0
        V[:, -1] = 0.0
        V[0, -1] = 2**-0.5
        V[1, -1] = 2**-0.5 * 1j
    V_inv = V.conj().T
    B = V_inv @ B.to(V.dtype)
    P = P.to(V.dtype) @ V_inv.T
    if B_clip is not None:
        B = B.real + 1j * B.imag.clamp(-B_clip, B_clip)
    return lam, P, B, V


DIAG_INITS = ("lin", "inv", "legs", "real")


def diag_init(init: str, N: int) -> tuple[Tensor, Tensor]:
    """S4D initialisations of a diagonal ``A`` and ``B`` with ``N/2`` conjugate-pair modes.

    With n = 0..N/2-1 and A = -re - i*im: lin (S4D-Lin) re 1/2, im pi*n; inv (S4D-Inv)
    re 1/2, im (N/pi)(N/(2n+1) - 1); legs (S4D-LegS) the diagonal of the LegS NPLR form with
    its B (the paper's 1/2 factor on B is dropped, as in the reference); real (S4D-Real)
    re n+1, im 0. B = 1 except for legs. Complex128 ``(A (N/2,), B (N/2,))``.
    """
    n = torch.arange(N // 2, dtype=torch.float64)
    B = torch.ones(N // 2, dtype=torch.complex128)
    if init == "lin":
        re, im = 0.5 * torch.ones_like(n), math.pi * n
    elif init == "inv":
        re, im = 0.5 * torch.ones_like(n), N / math.pi * (N / (2 * n + 1) - 1)
    elif init == "legs":
        W, _, B, _ = nplr("legs", N)
        re, im = -W.real, -W.imag
    elif init == "real":
        re, im = n + 1, torch.zeros_like(n)
    else:
        raise ValueError(f"unknown diagonal init {init!r}; expected one of {DIAG_INITS}")
    return -re - 1j * im, B


def log_uniform(shape: tuple[int, ...], lo: float, hi: float) -> Tensor:
    """Samples whose log is uniform in [log lo, log hi] (the Δ initialisation), returned as logs."""
    return torch.rand(shape, dtype=torch.float64) * (math.log(hi) - math.log(lo)) + math.log(lo)
