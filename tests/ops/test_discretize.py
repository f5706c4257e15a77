"""``ssmgraph.ops.discretize``: ZOH and bilinear discretisations against closed forms and quadrature; the Δ bias init."""

from __future__ import annotations

import math

import torch

from ssmgraph.ops.discretize import bilinear_dense, discretize_diag, dt_bias_init
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


def test_dt_bias_init_is_the_inverse_softplus_of_a_clamped_log_uniform_draw():
    lo, hi, floor = 1e-3, 1e-1, 2e-3
    torch.manual_seed(0)
    bias = dt_bias_init(4000, lo, hi, floor, dtype=F64)
    torch.manual_seed(0)
    drawn = torch.exp(torch.rand(4000, dtype=F64) * (math.log(hi) - math.log(lo)) + math.log(lo))
    dt = torch.nn.functional.softplus(bias)
    assert torch.allclose(dt, drawn.clamp(min=floor), rtol=1e-12, atol=0)
    assert dt.min() >= floor * (1 - 1e-12) and dt.max() <= hi * (1 + 1e-12)
    # log-uniform: about a quarter of the draws in each quarter of [log lo, log hi]
    quarter = ((dt.log() - math.log(lo)) / (math.log(hi) - math.log(lo)) * 4).floor().clamp(0, 3)
    assert torch.allclose(
        torch.bincount(quarter.long(), minlength=4).double() / 4000, torch.full((4,), 0.25, dtype=F64), atol=0.03
    )
    assert dt_bias_init(3, lo, hi, floor).dtype == torch.get_default_dtype()
