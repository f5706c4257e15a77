"""``ssmgraph.ops.vandermonde``: the blockwise Vandermonde product and its transpose against explicit sums."""

from __future__ import annotations

import pytest
import torch

from ssmgraph.ops.vandermonde import vandermonde, vandermonde_transpose

F64, C128 = torch.float64, torch.complex128


def test_vandermonde_and_transpose_equal_explicit_sums(rel_err):
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
def test_blockwise_vandermonde_values_and_gradients_equal_the_whole_matrix(v_shape, monkeypatch, rel_err):
    """Blocks of 5 positions (not dividing L), leading dims on v that log_a is broadcast over:
    values and both gradients equal autograd through the materialised matrix; gradcheck."""
    from ssmgraph.ops import vandermonde as module

    monkeypatch.setattr(module, "VANDERMONDE_CHUNK_ELEMENTS", 5 * 12)
    g = torch.Generator().manual_seed(4)
    v = torch.randn(*v_shape, dtype=C128, generator=g, requires_grad=True)
    log_a = torch.complex(-torch.rand(3, 4, dtype=F64, generator=g), torch.randn(3, 4, dtype=F64, generator=g)).requires_grad_()
    pos = torch.arange(23, dtype=F64)
    whole = torch.einsum("...n,...nl->...l", v, torch.exp(log_a.unsqueeze(-1) * pos))
    blocks = vandermonde(v, log_a, 23)
    assert rel_err(blocks, whole) < 1e-12
    w = torch.randn(blocks.shape, dtype=C128, generator=g)
    for a, b in zip(
        torch.autograd.grad((blocks * w).real.sum(), (v, log_a)), torch.autograd.grad((whole * w).real.sum(), (v, log_a))
    ):
        assert rel_err(a, b) < 1e-12
    assert torch.autograd.gradcheck(lambda v, la: vandermonde(v, la, 7), (v, log_a))
