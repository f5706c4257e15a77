"""Shared math of the structured state-space blocks (S4, S4D, S5, H3, gated MLP, Mamba).

Everything here is plain PyTorch (no CUDA extension, no pykeops), so it runs on CPU and
under ``torch.compile``.

* Linear recurrences ``x_t = a_t * x_{t-1} + b_t``: :func:`parallel_scan` (work-efficient
  odd/even reduction with a reverse-scan backward, real or complex) and its reference
  :func:`sequential_scan`.
* HiPPO matrices (LegS, LegT, FouT), their normal-plus-low-rank (NPLR) form and the
  diagonal (S4D) initialisations: :func:`hippo`, :func:`rank_correction`, :func:`nplr`,
  :func:`diag_init`.
* Discretisations (ZOH, bilinear) of diagonal systems: :func:`discretize_diag`.
* Convolution kernels: :func:`vandermonde_kernel` (diagonal SSMs, S4D),
  :func:`dplr_kernel` (S4's Cauchy + Woodbury generating function at roots of unity), and
  :func:`fft_conv` (causal / bidirectional convolution with transform length >= 2L).
* Dense discretised S4 matrices for the recurrent step (:func:`dplr_dense`,
  :func:`bilinear_dense`).

References: Gu, Goel, Ré, "Efficiently Modeling Long Sequences with Structured State
Spaces" (S4, ICLR 2022); Gu et al., "On the Parameterization and Initialization of
Diagonal State Space Models" (S4D, NeurIPS 2022); Gu et al., "How to Train Your HiPPO"
(2022); Smith, Warrington, Linderman, "Simplified State Space Layers" (S5, ICLR 2023);
Blelloch, "Prefix sums and their applications" (1990). Reference code:
state-spaces/s4 ``models/s4/s4.py`` and ``src/models/hippo/hippo.py``, lindermanlab/S5
``s5/ssm_init.py``, alxndrTL/mamba.py ``pscan.py`` (reverse-scan backward).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

# --------------------------------------------------------------------------------------
# Linear recurrences x_t = a_t * x_{t-1} + b_t
# --------------------------------------------------------------------------------------


def _scan0(a: Tensor, b: Tensor) -> Tensor:
    """Inclusive scan along dim 0 of the operator (a_i, b_i)∘(a_j, b_j) = (a_j a_i, a_j b_i + b_j).

    Odd/even (Blelloch-style) reduction: combine neighbouring pairs, scan the half-length
    problem recursively, then fill in the even positions. O(L) work and O(log L) depth;
    out-of-place, so it is autograd- and compile-friendly.
    """
    length = b.shape[0]
    if length == 1:
        return b
    if length % 2:
        # Pad with the identity element (a=1, b=0); the padded output is dropped.
        a = torch.cat([a, torch.ones_like(a[:1])])
        b = torch.cat([b, torch.zeros_like(b[:1])])
    a_even, a_odd = a[0::2], a[1::2]
    b_even, b_odd = b[0::2], b[1::2]
    x_odd = _scan0(a_odd * a_even, a_odd * b_even + b_odd)  # x at positions 1, 3, 5, ...
    x_even = torch.cat([b_even[:1], a_even[1:] * x_odd[:-1] + b_even[1:]])  # x at 0, 2, 4, ...
    x = torch.stack([x_even, x_odd], dim=1).flatten(0, 1)
    return x[:length]


class _ParallelScan(torch.autograd.Function):
    """Scan along dim 0 with the reverse-scan backward (saves only ``a`` and ``x``).

    With g the gradient w.r.t. x: the adjoint recurrence is λ_t = g_t + conj(a_{t+1}) λ_{t+1},
    so db_t = λ_t, da_t = λ_t conj(x_{t-1}), dx0 = conj(a_0) λ_0 (PyTorch's conjugate
    Wirtinger convention, which reduces to the ordinary gradient for real tensors).
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, x0: Tensor) -> Tensor:  # type: ignore[override]
        b0 = torch.cat([b[:1] + a[:1] * x0.unsqueeze(0), b[1:]])
        x = _scan0(a, b0)
        ctx.save_for_backward(a, x, x0)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        a, x, x0 = ctx.saved_tensors
        a_next = torch.cat([a[1:], torch.zeros_like(a[:1])]).conj()
        lam = _scan0(a_next.flip(0), grad.flip(0)).flip(0)
        x_prev = torch.cat([x0.unsqueeze(0).expand_as(x[:1]), x[:-1]]).conj()
        return lam * x_prev, lam, a[0].conj() * lam[0]


def _prepare(a: Tensor, b: Tensor, dim: int, x0: Tensor | None) -> tuple[Tensor, Tensor, Tensor, int]:
    dtype = torch.promote_types(a.dtype, b.dtype)
    if x0 is not None:
        dtype = torch.promote_types(dtype, x0.dtype)
    a, b = torch.broadcast_tensors(a.to(dtype), b.to(dtype))
    dim = dim % b.dim()
    a, b = a.movedim(dim, 0), b.movedim(dim, 0)
    if x0 is None:
        x0 = torch.zeros_like(b[0])
    else:
        x0 = x0.to(dtype).expand_as(b[0])
    return a, b, x0, dim


def parallel_scan(a: Tensor, b: Tensor, dim: int = 1, x0: Tensor | None = None) -> Tensor:
    """Solve ``x_t = a_t * x_{t-1} + b_t`` along ``dim`` for all t, with ``x_{-1} = x0`` (zeros).

    ``a`` and ``b`` broadcast against each other (e.g. a time-invariant ``a`` of shape
    (1, 1, N) with ``b`` of shape (B, L, N)); real or complex. ``x0`` has the shape of ``b``
    without ``dim`` (or broadcasts to it). Returns ``x`` with the broadcast shape, ``dim``
    in place. Work-efficient (O(L) work, O(log L) depth) with a reverse-scan backward.
    """
    a, b, x0, dim = _prepare(a, b, dim, x0)
    return _ParallelScan.apply(a, b, x0).movedim(0, dim)


def sequential_scan(a: Tensor, b: Tensor, dim: int = 1, x0: Tensor | None = None) -> Tensor:
    """Reference for :func:`parallel_scan`: the plain loop, same arguments and result.

    Slices are taken once with ``unbind`` (slicing inside the loop makes autograd O(L²)).
    """
    a, b, x0, dim = _prepare(a, b, dim, x0)
    x = x0
    out = []
    for a_t, b_t in zip(a.unbind(0), b.unbind(0)):
        x = a_t * x + b_t
        out.append(x)
    return torch.stack(out, dim=dim)


# --------------------------------------------------------------------------------------
# HiPPO matrices and their structured forms (float64, computed once at init)
# --------------------------------------------------------------------------------------

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


def measure_rank(measure: str) -> int:
    """Rank of the correction that makes the measure's A normal (legt needs 2)."""
    return 2 if measure == "legt" else 1


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


# --------------------------------------------------------------------------------------
# Discretisation of diagonal systems
# --------------------------------------------------------------------------------------

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


def conj_full(x: Tensor) -> Tensor:
    """``[x, conj x]`` along the last dim: a half (conjugate-symmetric) state to the full one."""
    return torch.cat([x, x.conj()], dim=-1)


def dplr_dense(Lambda: Tensor, P: Tensor) -> Tensor:
    """The full ``(..., N, N)`` matrix ``diag([Λ, conj Λ]) - Σ_r p_r p_r^*`` with ``p_r = [P_r, conj P_r]``.

    ``Lambda (..., N/2)``, ``P (R, ..., N/2)``.
    """
    p = conj_full(P)
    return torch.diag_embed(conj_full(Lambda)) - torch.einsum("r...m,r...n->...mn", p, p.conj())


# --------------------------------------------------------------------------------------
# Convolution kernels
# --------------------------------------------------------------------------------------


def cexp(z: Tensor) -> Tensor:
    """``exp(z)`` for complex z as ``polar(exp(Re z), Im z)``: same values, 2-3x faster than
    the complex ``exp`` kernel on CPU."""
    return torch.polar(torch.exp(z.real), z.imag)


VANDERMONDE_CHUNK_ELEMENTS = 1 << 21
"""Entries of the Vandermonde matrix made at once (32 MB in complex64): the kernel is built
over blocks of positions of about this size, never the whole (..., N, L) matrix."""


def vandermonde(v: Tensor, log_a: Tensor, L: int) -> Tensor:
    """``Σ_n v[..., n] exp(log_a[..., n] * l)`` for l = 0..L-1 (complex, shape (..., L)).

    Computed over blocks of positions, forward and backward, so memory stays O(N · block)
    instead of the (..., N, L) matrix that the reference's "naive" backend materialises (and
    autograd would keep): at L = 16k and 256 channels that matrix alone is 1 GB.
    """
    return _Vandermonde.apply(v, log_a, L)


def _vandermonde_blocks(log_a: Tensor, L: int) -> Iterator[tuple[slice, Tensor, Tensor]]:
    """(slice of positions, positions, exp(log_a · positions)) for consecutive blocks."""
    block = max(1, VANDERMONDE_CHUNK_ELEMENTS // max(1, log_a.numel()))
    for start in range(0, L, block):
        end = min(start + block, L)
        pos = torch.arange(start, end, device=log_a.device, dtype=log_a.real.dtype)
        yield slice(start, end), pos, cexp(log_a.unsqueeze(-1) * pos)


class _Vandermonde(torch.autograd.Function):
    """y_l = Σ_n v_n z_n^l with z = exp(log_a), holomorphic in v and log_a, so (PyTorch's
    conjugate convention) grad v_n = Σ_l g_l conj(z_n^l) and grad log_a_n = conj(v_n) Σ_l
    l g_l conj(z_n^l), summed over the dimensions log_a was broadcast along."""

    @staticmethod
    def forward(ctx, v: Tensor, log_a: Tensor, L: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(v, log_a)
        ctx.L = L
        return torch.cat([torch.einsum("...n,...nl->...l", v, w) for _, _, w in _vandermonde_blocks(log_a, L)], dim=-1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        v, log_a = ctx.saved_tensors
        grad = grad.to(v.dtype if v.is_complex() else log_a.dtype)
        want_v, want_a = ctx.needs_input_grad[:2]
        acc_v = acc_a = 0
        for span, pos, w in _vandermonde_blocks(log_a, ctx.L):
            g, wc = grad[..., span], w.conj()
            if want_v:
                acc_v = acc_v + torch.einsum("...l,...nl->...n", g, wc)
            if want_a:
                acc_a = acc_a + torch.einsum("...l,...nl->...n", g * pos, wc)
        grad_v = (acc_v if v.is_complex() else acc_v.real).sum_to_size(v.shape) if want_v else None
        grad_log_a = (v.conj() * acc_a).sum_to_size(log_a.shape) if want_a else None
        return grad_v, grad_log_a, None


def vandermonde_transpose(u: Tensor, log_a: Tensor) -> Tensor:
    """``Σ_l u[..., l] exp(log_a[n] * l)``: ``u (..., H, L)`` real or complex, ``log_a (H, N)`` → (..., H, N)."""
    pos = torch.arange(u.shape[-1], device=log_a.device, dtype=log_a.real.dtype)
    return torch.einsum("...hl,hnl->...hn", u.to(log_a.dtype), cexp(log_a.unsqueeze(-1) * pos))


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


def fft_conv(u: Tensor, k: Tensor, k_rev: Tensor | None = None) -> Tensor:
    """Convolution along the last dim through the FFT, with transform length 2L (never circular).

    ``u (..., L)`` and ``k (..., Lk)`` broadcast (Lk >= L; extra taps are ignored).
    Causal: ``y_t = Σ_{s<=t} k[t-s] u_s``. With ``k_rev``, adds the anti-causal half of the
    reference's bidirectional S4 convolution: ``Σ_{s>t} k_rev[s-t-1] u_s``.
    """
    L = u.shape[-1]
    k = k[..., :L]
    if k_rev is not None:
        k = torch.cat([k, k_rev[..., :L].flip(-1)], dim=-1)  # taps t-s in [-L, L)
    n = 2 * L
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return y[..., :L]


# --------------------------------------------------------------------------------------
# Sequences with per-example lengths (right padding)
# --------------------------------------------------------------------------------------


def mask_lengths(mask: Tensor | None, L: int) -> Tensor | None:
    """Per-example number of valid tokens of a right-padded (B, L) bool mask (None: all valid)."""
    if mask is None:
        return None
    if mask.shape[-1] != L:
        raise ValueError(f"mask has length {mask.shape[-1]}, the input has length {L}")
    return mask.sum(-1)


def right_align(u: Tensor, lengths: Tensor | None) -> Tensor:
    """Shift each example of ``u (B, ..., L)`` right so its last valid token sits at L-1, zeros before."""
    if lengths is None:
        return u
    L = u.shape[-1]
    idx = torch.arange(L, device=u.device) - (L - lengths)[:, None]  # (B, L)
    idx = idx.view(idx.shape[0], *([1] * (u.dim() - 2)), L)
    valid = idx >= 0
    out = torch.gather(u, -1, idx.clamp(min=0).expand(u.shape))
    return torch.where(valid, out, torch.zeros_like(out))


def diag_final_state(
    u: Tensor, log_dA: Tensor, dB: Tensor, x0: Tensor | None = None, lengths: Tensor | None = None
) -> Tensor:
    """State after the last valid input of the diagonal recurrence ``x_t = dA x_{t-1} + dB u_t``.

    ``u (B, ..., H, L)`` real, ``log_dA``/``dB`` ``(H, N)``, ``x0 (B, ..., H, N)`` (zeros when
    None), ``lengths (B,)`` (all L when None). Computed as a Vandermonde-transpose product on
    the right-aligned, reversed input plus ``dA^len x0``.
    """
    L = u.shape[-1]
    u = right_align(u, lengths).flip(-1)
    x = vandermonde_transpose(u, log_dA) * dB
    if x0 is not None:
        n = torch.full((u.shape[0],), L, device=u.device) if lengths is None else lengths
        n = n.view(-1, *([1] * (x0.dim() - 1))).to(log_dA.real.dtype)
        x = x + cexp(n * log_dA) * x0
    return x


def dense_final_state(
    dA: Tensor,
    dB: Tensor,
    u: Tensor,
    x0: Tensor | None = None,
    lengths: Tensor | None = None,
    block: int = 64,
) -> Tensor:
    """State after the last valid input of ``x_t = dA x_{t-1} + dB u_t`` with dense ``dA (H, N, N)``.

    ``dB (H, N)``, ``u (B, ..., H, L)`` real, ``x0 (B, ..., H, N)``. Blocked: the columns
    ``dA^j dB`` (j < block) give each block's state with one contraction, and the block
    states are combined by a tree over powers ``dA^(block·2^k)``; cost O(B·H·N·L +
    B·H·N²·L/block + H·N³·log L) instead of a length-L loop.
    """
    L = u.shape[-1]
    u = right_align(u, lengths).to(dA.dtype)
    S = L if L <= block else 1 << (block - 1).bit_length()  # one block, or power-of-two blocks
    T = -(-L // S)
    u = F.pad(u, (T * S - L, 0))  # zeros in front do not change the final state
    # W[h, :, j] = dA^j dB for j < S, by doubling; afterwards Ap = dA^(2^k) with 2^k >= S.
    W, Ap = dB.unsqueeze(-1), dA
    while W.shape[-1] < S:
        W = torch.cat([W, Ap @ W], dim=-1)
        Ap = Ap @ Ap
    W = W[..., :S]
    ub = u.reshape(*u.shape[:-1], T, S).flip(-1)
    states = torch.einsum("hnj,...htj->...thn", W, ub)  # (B, ..., T, H, N)
    # Combine block states: x = Σ_t (dA^S)^(T-1-t) s_t, pairwise, padding T to a power of two in front.
    T2 = 1 << (T - 1).bit_length()
    states = F.pad(states, (0, 0, 0, 0, T2 - T, 0)) if T2 > T else states
    M = Ap  # = dA^S whenever T > 1 (S is then a power of two)
    while states.shape[-3] > 1:
        left, right = states[..., 0::2, :, :], states[..., 1::2, :, :]
        states = torch.einsum("hmn,...thn->...thm", M, left) + right
        M = M @ M
    x = states[..., 0, :, :]
    if x0 is not None:
        x = x + _power_apply(dA, x0, L, lengths)
    return x


def _power_apply(dA: Tensor, x0: Tensor, L: int, lengths: Tensor | None) -> Tensor:
    """``dA^n x0`` with n = lengths (per example) or L, by binary powers (``x0 (B, ..., H, N)``)."""
    if lengths is None:
        return torch.einsum("hmn,...hn->...hm", torch.linalg.matrix_power(dA, L), x0)
    n = lengths.view(-1, *([1] * (x0.dim() - 1)))
    x, M = x0, dA
    for bit in range(max(L, 1).bit_length()):
        x = torch.where((n >> bit) & 1 == 1, torch.einsum("hmn,...hn->...hm", M, x), x)
        M = M @ M
    return x


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype of an SSM state for a requested dtype: float64/complex128 →
    complex128; anything else (float32, bfloat16, float16, complex64) → complex64 — states
    are never kept below single precision."""
    return torch.complex128 if dtype in (torch.float64, torch.complex128) else torch.complex64


@contextlib.contextmanager
def host_init() -> Iterator[torch.device]:
    """Run initialisation math (eigendecompositions, matrix powers) on the CPU, even under a
    ``torch.device("meta")`` context where it cannot run; yields the ambient device that
    the results go to, so a model built on the meta device allocates nothing of size."""
    device = torch.empty(0).device
    with torch.device("cpu"):
        yield device


def register_ssm_param(module: torch.nn.Module, name: str, tensor: Tensor, lr: float) -> None:
    """Register an SSM tensor (A, Δ, B, P) as the references do: a parameter with its own
    learning rate and no weight decay, or a frozen buffer when ``lr == 0``."""
    if lr == 0.0:
        module.register_buffer(name, tensor)
    else:
        from ssmgraph.blocks._optim import mark_optim

        module.register_parameter(name, mark_optim(torch.nn.Parameter(tensor), lr=lr, weight_decay=0.0))


def ssm_dtype(module: torch.nn.Module) -> torch.dtype:
    """The real dtype the SSM math of ``module`` runs in: that of its first floating parameter."""
    for t in module.parameters():
        if t.is_floating_point():
            return t.dtype
    for t in module.buffers():
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()
