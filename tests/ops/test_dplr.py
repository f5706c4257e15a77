"""``ssmgraph.ops.dplr``: S4's Cauchy/Woodbury kernel against dense bilinear Krylov powers."""

from __future__ import annotations

import pytest
import torch

from ssmgraph.ops.dplr import conj_full, dplr_dense, dplr_kernel

F64, C128 = torch.float64, torch.complex128


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("L", [16, 15])
def test_dplr_kernel_equals_dense_discretised_krylov(rank, L, rel_err):
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
