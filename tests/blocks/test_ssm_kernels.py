"""The shared SSM math against independent references (explicit loops, dense matrices, closed forms)."""

from __future__ import annotations

import math

import pytest
import torch

from ssmgraph.blocks.ssm_kernels import (
    DIAG_INITS,
    MEASURES,
    bilinear_dense,
    conj_full,
    dense_final_state,
    diag_final_state,
    diag_init,
    discretize_diag,
    dplr_dense,
    dplr_kernel,
    fft_conv,
    hippo,
    hippo_normal,
    nplr,
    parallel_scan,
    right_align,
    sequential_scan,
    vandermonde,
    vandermonde_transpose,
)

F64, C128 = torch.float64, torch.complex128


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def naive_scan(a, b, x0):
    """x_t = a_t x_{t-1} + b_t along dim 1: the plain loop, sharing no code with the library."""
    xs, x = [], x0
    for t in range(b.shape[1]):
        x = a[:, t] * x + b[:, t]
        xs.append(x)
    return torch.stack(xs, 1)


# ---------------------------------------------------------------------------------- scans


@pytest.mark.parametrize("dtype", [F64, C128])
@pytest.mark.parametrize("L", [1, 2, 3, 5, 8, 13, 64, 100])
def test_parallel_scan_equals_naive_loop(dtype, L):
    g = torch.Generator().manual_seed(L)
    a = (torch.rand(2, L, 3, generator=g, dtype=F64) * 0.98).to(dtype)
    if dtype.is_complex:
        a = a * torch.exp(1j * torch.rand(2, L, 3, generator=g, dtype=F64))
    b = torch.randn(2, L, 3, generator=g, dtype=dtype)
    x0 = torch.randn(2, 3, generator=g, dtype=dtype)
    ref = naive_scan(a, b, x0)
    assert rel_err(parallel_scan(a, b, dim=1, x0=x0), ref) < 1e-12
    assert rel_err(sequential_scan(a, b, dim=1, x0=x0), ref) < 1e-12
    assert rel_err(parallel_scan(a, b), naive_scan(a, b, torch.zeros_like(x0))) < 1e-12


def test_parallel_scan_broadcasts_a_and_takes_any_dim():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 1, dtype=F64, generator=g)  # time-varying, shared over batch and channels
    b = torch.randn(4, 5, 3, dtype=F64, generator=g)
    ref = naive_scan(a.expand(4, 5, 3), b, torch.zeros(4, 3, dtype=F64))
    assert parallel_scan(a, b, dim=1).shape == (4, 5, 3)
    assert rel_err(parallel_scan(a, b, dim=1), ref) < 1e-12
    # the scan dim may be anywhere
    bt = b.permute(2, 0, 1)  # (3, 4, 5) scan over the last dim
    out = parallel_scan(a.squeeze(-1), bt, dim=-1)
    assert rel_err(out.permute(1, 2, 0), ref) < 1e-12


def test_parallel_scan_gradients_equal_the_loop_and_gradcheck():
    g = torch.Generator().manual_seed(1)
    L = 37
    phase = torch.exp(1j * torch.rand(2, L, 3, generator=g, dtype=F64))
    a = (torch.rand(2, L, 3, generator=g, dtype=F64) * 0.9 * phase).requires_grad_()
    b = torch.randn(2, L, 3, generator=g, dtype=C128, requires_grad=True)
    x0 = torch.randn(2, 3, generator=g, dtype=C128, requires_grad=True)
    w = torch.randn(2, L, 3, generator=g, dtype=C128)
    g1 = torch.autograd.grad((parallel_scan(a, b, x0=x0) * w).real.sum(), (a, b, x0))
    g2 = torch.autograd.grad((naive_scan(a, b, x0) * w).real.sum(), (a, b, x0))
    for u, v in zip(g1, g2):
        assert rel_err(u, v) < 1e-12
    small = [t.detach()[:, :6].clone().requires_grad_() for t in (a, b)]
    x0_small = x0.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a_, b_, x_: parallel_scan(a_, b_, x0=x_), (*small, x0_small))


def test_parallel_scan_float32_matches_float64_loop():
    g = torch.Generator().manual_seed(2)
    a = torch.exp(-torch.rand(2, 1024, 16, generator=g, dtype=F64) * 0.1)
    b = torch.randn(2, 1024, 16, generator=g, dtype=F64)
    ref = naive_scan(a, b, torch.zeros(2, 16, dtype=F64))
    assert rel_err(parallel_scan(a.float(), b.float()).double(), ref) < 1e-5


# ---------------------------------------------------------------------------------- HiPPO


@pytest.mark.parametrize("measure", MEASURES)
def test_nplr_is_unitarily_equivalent_to_the_hippo_matrix(measure):
    N = 8
    A, B = hippo(measure, N)
    W, P, Bt, V = nplr(measure, N, B_clip=None)
    Vf = conj_full(V)  # (N, N) unitary
    assert torch.allclose(Vf.conj().T @ Vf, torch.eye(N, dtype=C128), atol=1e-12)
    assert torch.allclose(Vf @ dplr_dense(W, P) @ Vf.conj().T, A.to(C128), atol=1e-12)
    assert torch.allclose(Vf @ conj_full(Bt), B.to(C128), atol=1e-12)
    assert (W.imag <= 1e-12).all()  # the kept half of each pair


def test_hippo_legs_matches_its_closed_form():
    A, B = hippo("legs", 4)
    expected = torch.tensor(
        [
            [-1, 0, 0, 0],
            [-math.sqrt(3), -2, 0, 0],
            [-math.sqrt(5), -math.sqrt(15), -3, 0],
            [-math.sqrt(7), -math.sqrt(21), -math.sqrt(35), -4],
        ],
        dtype=F64,
    )
    assert torch.allclose(A, expected)
    assert torch.allclose(B, torch.sqrt(torch.tensor([1.0, 3, 5, 7], dtype=F64)))
    eig = torch.linalg.eigvals(hippo("legs", 16)[0]).real.sort().values
    assert torch.allclose(eig, -torch.arange(16, 0, -1, dtype=F64), atol=1e-8)


def test_hippo_normal_part_has_real_part_minus_half():
    lam, V, _, _ = hippo_normal("legs", 16)
    assert torch.allclose(lam.real, torch.full((16,), -0.5, dtype=F64))
    assert (lam.imag[1:] >= lam.imag[:-1]).all()  # eigh order


def test_diag_inits():
    N = 8
    n = torch.arange(N // 2, dtype=F64)
    A, B = diag_init("lin", N)
    assert torch.allclose(A, -0.5 - 1j * math.pi * n) and torch.all(B == 1)
    A, _ = diag_init("inv", N)
    assert torch.allclose(A.imag, -N / math.pi * (N / (2 * n + 1) - 1))
    A, _ = diag_init("real", N)
    assert torch.allclose(A, -(n + 1).to(C128))
    A, B = diag_init("legs", N)
    W, _, Bn, _ = nplr("legs", N)
    assert torch.allclose(A, W) and torch.allclose(B, Bn)
    for init in DIAG_INITS:
        A, _ = diag_init(init, N)
        assert (A.real < 0).all() and (A.imag <= 0).all()


# ---------------------------------------------------------------------------------- discretisation


def test_discretize_diag_zoh_and_bilinear_closed_forms():
    A = torch.tensor([-0.5 - 3j, -2.0 + 0j], dtype=C128)
    dt = torch.tensor(0.1, dtype=F64)
    dA, dB, log_dA = discretize_diag(A, dt, "zoh")
    # ZOH: B̄ = ∫_0^dt exp(A s) ds, checked by quadrature
    s = torch.linspace(0, 0.1, 20001, dtype=F64)
    integral = torch.trapezoid(torch.exp(A[:, None] * s), s, dim=-1)
    assert torch.allclose(dA, torch.exp(0.1 * A)) and torch.allclose(dB, integral, atol=1e-9)
    assert torch.allclose(torch.exp(log_dA), dA)
    dA, dB, log_dA = discretize_diag(A, dt, "bilinear")
    assert torch.allclose(dA, (1 + 0.05 * A) / (1 - 0.05 * A))
    assert torch.allclose(dB, 0.1 / (1 - 0.05 * A))
    assert torch.allclose(torch.exp(log_dA), dA)


def test_bilinear_dense_reduces_to_the_diagonal_formula():
    Lam = torch.tensor([[-0.5 - 1j, -1.0 - 4j]], dtype=C128)
    P = torch.zeros(1, 1, 2, dtype=C128)
    dt = torch.tensor([0.3], dtype=F64)
    dA, dB = bilinear_dense(dplr_dense(Lam, P), torch.ones(1, 4, dtype=C128), dt)
    dA_d, dBs, _ = discretize_diag(conj_full(Lam), dt[:, None], "bilinear")
    assert torch.allclose(dA, torch.diag_embed(dA_d)) and torch.allclose(dB, dBs)


# ---------------------------------------------------------------------------------- kernels


def test_vandermonde_and_transpose_equal_explicit_sums():
    g = torch.Generator().manual_seed(3)
    v = torch.randn(3, 4, dtype=C128, generator=g)
    log_a = torch.complex(-torch.rand(3, 4, dtype=F64, generator=g), torch.randn(3, 4, dtype=F64, generator=g))
    K = vandermonde(v, log_a, 9)
    ref = torch.stack([(v * torch.exp(log_a) ** l).sum(-1) for l in range(9)], -1)
    assert rel_err(K, ref) < 1e-12
    u = torch.randn(2, 3, 9, dtype=F64, generator=g)
    T = vandermonde_transpose(u, log_a)
    ref = sum(u[..., l, None] * torch.exp(log_a) ** l for l in range(9))
    assert rel_err(T, ref) < 1e-12


@pytest.mark.parametrize("v_shape", [(3, 4), (2, 3, 4), (5, 2, 3, 4)])
def test_blockwise_vandermonde_values_and_gradients_equal_the_whole_matrix(v_shape, monkeypatch):
    """Blocks of 5 positions (not dividing L), leading dims on v that log_a is broadcast over:
    values and both gradients equal autograd through the materialised matrix; gradcheck."""
    from ssmgraph.blocks import ssm_kernels

    monkeypatch.setattr(ssm_kernels, "VANDERMONDE_CHUNK_ELEMENTS", 5 * 12)
    g = torch.Generator().manual_seed(4)
    v = torch.randn(*v_shape, dtype=C128, generator=g, requires_grad=True)
    log_a = torch.complex(-torch.rand(3, 4, dtype=F64, generator=g), torch.randn(3, 4, dtype=F64, generator=g)).requires_grad_()
    pos = torch.arange(23, dtype=F64)
    whole = torch.einsum("...n,...nl->...l", v, torch.exp(log_a.unsqueeze(-1) * pos))
    blocks = vandermonde(v, log_a, 23)
    assert rel_err(blocks, whole) < 1e-12
    w = torch.randn(blocks.shape, dtype=C128, generator=g)
    for a, b in zip(torch.autograd.grad((blocks * w).real.sum(), (v, log_a)), torch.autograd.grad((whole * w).real.sum(), (v, log_a))):
        assert rel_err(a, b) < 1e-12
    assert torch.autograd.gradcheck(lambda v, la: vandermonde(v, la, 7), (v, log_a))


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("L", [16, 15])
def test_dplr_kernel_equals_dense_discretised_krylov(rank, L):
    g = torch.Generator().manual_seed(rank * 100 + L)
    H, N = 3, 4
    Lam = torch.complex(-torch.rand(H, N, dtype=F64, generator=g) - 0.1, -5 * torch.rand(H, N, dtype=F64, generator=g))
    P = 0.5 * torch.randn(rank, H, N, dtype=C128, generator=g)
    B = torch.randn(2, H, N, dtype=C128, generator=g)
    C = torch.randn(3, H, N, dtype=C128, generator=g)  # the true C
    dt = torch.rand(H, dtype=F64, generator=g) * 0.5 + 0.05
    # independent reference: dense bilinear discretisation, powers by repeated multiplication
    A = dplr_dense(Lam, P)
    eye = torch.eye(2 * N, dtype=C128)
    lhs = eye - dt[:, None, None] / 2 * A
    dA = torch.linalg.inv(lhs) @ (eye + dt[:, None, None] / 2 * A)
    ref = torch.zeros(2, 3, H, L, dtype=C128)
    for b in range(2):
        x = torch.linalg.inv(lhs) @ (dt[:, None] * conj_full(B[b])).unsqueeze(-1)
        for l in range(L):
            ref[b, :, :, l] = torch.einsum("chn,hn->ch", conj_full(C), x[..., 0])
            x = dA @ x
    AL = torch.linalg.matrix_power(dA, L)
    C_tilde = torch.einsum("chm,hmn->chn", conj_full(C), eye - AL)[..., :N]
    K = dplr_kernel(Lam, P, B, C_tilde, dt, L)
    assert ref.imag.abs().max() < 1e-12
    assert rel_err(K, ref.real) < 1e-12


def direct_conv(u, k, k_rev=None):
    L = u.shape[-1]
    y = torch.zeros_like(u)
    for t in range(L):
        for s in range(L):
            if s <= t:
                y[..., t] += k[..., t - s] * u[..., s]
            elif k_rev is not None:
                y[..., t] += k_rev[..., s - t - 1] * u[..., s]
    return y


def test_fft_conv_is_linear_causal_convolution():
    g = torch.Generator().manual_seed(4)
    u = torch.randn(2, 3, 11, dtype=F64, generator=g)
    k, k2 = torch.randn(3, 11, dtype=F64, generator=g), torch.randn(3, 11, dtype=F64, generator=g)
    assert rel_err(fft_conv(u, k), direct_conv(u, k)) < 1e-12
    assert rel_err(fft_conv(u, k, k2), direct_conv(u, k, k2)) < 1e-12
    # T2: a transform of length L wraps around (circular), so it is not the causal convolution
    n = u.shape[-1]
    circular = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    assert rel_err(circular, direct_conv(u, k)) > 1e-2


# ---------------------------------------------------------------------------------- final states


def test_right_align():
    u = torch.arange(10, dtype=F64).view(2, 1, 5)
    out = right_align(u, torch.tensor([5, 3]))
    assert out.tolist() == [[[0, 1, 2, 3, 4]], [[0, 0, 5, 6, 7]]]


def test_diag_and_dense_final_states_equal_loops():
    g = torch.Generator().manual_seed(5)
    H, N, L = 3, 6, 37
    u = torch.randn(2, H, L, dtype=F64, generator=g)
    x0 = torch.randn(2, H, N, dtype=C128, generator=g)
    lengths = torch.tensor([L, 20])
    dA = 0.3 * torch.randn(H, N, N, dtype=C128, generator=g)
    dB = torch.randn(H, N, dtype=C128, generator=g)
    log_a = torch.complex(-torch.rand(H, N, dtype=F64, generator=g), torch.randn(H, N, dtype=F64, generator=g))
    for b in range(2):
        xd, xs = x0[b], x0[b]
        for t in range(int(lengths[b])):
            xd = torch.einsum("hmn,hn->hm", dA, xd) + dB * u[b, :, t, None]
            xs = torch.exp(log_a) * xs + dB * u[b, :, t, None]
        for block in (4, 5, 64):
            assert rel_err(dense_final_state(dA, dB, u, x0, lengths, block=block)[b], xd) < 1e-12
        assert rel_err(diag_final_state(u, log_a, dB, x0, lengths)[b], xs) < 1e-12
    full = dense_final_state(dA, dB, u, x0)
    assert rel_err(full, dense_final_state(dA, dB, u, x0, torch.tensor([L, L]))) < 1e-12
