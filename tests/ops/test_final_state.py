"""``ssmgraph.ops.final_state``: right alignment and the final states of diagonal and dense SSMs against loops."""

from __future__ import annotations

import torch

from ssmgraph.ops.final_state import dense_final_state, diag_final_state, right_align

F64, C128 = torch.float64, torch.complex128


def test_right_align():
    u = torch.arange(10, dtype=F64).view(2, 1, 5)
    out = right_align(u, torch.tensor([5, 3]))
    assert out.tolist() == [[[0, 1, 2, 3, 4]], [[0, 0, 5, 6, 7]]]


def test_diag_and_dense_final_states_equal_loops(rel_err):
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
