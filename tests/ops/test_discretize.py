"""``ssmgraph.ops.discretize``: ZOH and bilinear discretisations against closed forms and quadrature."""

from __future__ import annotations

import torch

from ssmgraph.ops.discretize import bilinear_dense, discretize_diag
from ssmgraph.ops.dplr import conj_full, dplr_dense

F64, C128 = torch.float64, torch.complex128


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
