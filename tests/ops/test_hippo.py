"""``ssmgraph.ops.hippo``: HiPPO matrices, their NPLR form and the diagonal inits, against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from ssmgraph.ops.dplr import conj_full, dplr_dense
from ssmgraph.ops.hippo import DIAG_INITS, MEASURES, diag_init, hippo, hippo_normal, nplr

F64, C128 = torch.float64, torch.complex128


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
    lam, _V, _, _ = hippo_normal("legs", 16)
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
