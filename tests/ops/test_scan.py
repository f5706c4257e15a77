"""``ssmgraph.ops.scan``: the parallel and sequential scans against a naive loop."""

from __future__ import annotations

import pytest
import torch

from ssmgraph.ops.scan import parallel_scan, sequential_scan

F64, C128 = torch.float64, torch.complex128


def naive_scan(a, b, x0):
    """x_t = a_t x_{t-1} + b_t along dim 1: the plain loop, sharing no code with the library."""
    xs, x = [], x0
    for t in range(b.shape[1]):
        x = a[:, t] * x + b[:, t]
        xs.append(x)
    return torch.stack(xs, 1)


@pytest.mark.parametrize("dtype", [F64, C128])
@pytest.mark.parametrize("L", [1, 2, 3, 5, 8, 13, 64, 100])
def test_parallel_scan_equals_naive_loop(dtype, L, rel_err):
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


def test_parallel_scan_broadcasts_a_and_takes_any_dim(rel_err):
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


def test_parallel_scan_gradients_equal_the_loop_and_gradcheck(rel_err):
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


def test_parallel_scan_float32_matches_float64_loop(rel_err):
    g = torch.Generator().manual_seed(2)
    a = torch.exp(-torch.rand(2, 1024, 16, generator=g, dtype=F64) * 0.1)
    b = torch.randn(2, 1024, 16, generator=g, dtype=F64)
    ref = naive_scan(a, b, torch.zeros(2, 16, dtype=F64))
    assert rel_err(parallel_scan(a.float(), b.float()).double(), ref) < 1e-5
