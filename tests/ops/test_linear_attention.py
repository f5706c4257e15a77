"""``ssmgraph.ops.linear_attention``: chunked GLA against the plain loop of the paper's recurrence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmgraph.ops.linear_attention import chunk_gla, gla_step

F64 = torch.float64


def gla_loop(q, k, v, log_a, scale, s0):
    """S_t = diag(α_t) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t (Yang et al. 2024 eq. 3), one position at a time."""
    s, outs = s0.clone(), []
    for t in range(q.shape[2]):
        s = torch.exp(log_a[:, :, t]).unsqueeze(-1) * s + k[:, :, t].unsqueeze(-1) * v[:, :, t].unsqueeze(-2)
        outs.append(scale * (q[:, :, t].unsqueeze(-2) @ s).squeeze(-2))
    return torch.stack(outs, 2), s


def inputs(length, dtype=F64, seed=0, batch=2, heads=3, dk=5, dv=4, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, dk, generator=g, dtype=dtype)
    k = torch.randn(batch, heads, length, dk, generator=g, dtype=dtype)
    v = torch.randn(batch, heads, length, dv, generator=g, dtype=dtype)
    log_a = F.logsigmoid(spread * torch.randn(batch, heads, length, dk, generator=g, dtype=dtype))
    s0 = torch.randn(batch, heads, dk, dv, generator=g, dtype=dtype)
    return q, k, v, log_a, s0


@pytest.mark.parametrize(
    ("length", "chunk", "sub"), [(1, 64, 16), (7, 4, 2), (37, 16, 4), (64, 16, 16), (100, 32, 8), (50, 12, 5)]
)
def test_chunked_equals_loop_and_steps(length, chunk, sub, rel_err):
    q, k, v, log_a, s0 = inputs(length, seed=length)
    o_ref, s_ref = gla_loop(q, k, v, log_a, 0.7, s0)
    o, s = chunk_gla(q, k, v, log_a, scale=0.7, initial_state=s0, chunk_size=chunk, sub_chunk=sub)
    assert rel_err(o, o_ref) < 1e-12 and rel_err(s, s_ref) < 1e-12
    state, steps = s0, []
    for t in range(length):
        o_t, state = gla_step(q[:, :, t], k[:, :, t], v[:, :, t], log_a[:, :, t], state, 0.7)
        steps.append(o_t)
    assert rel_err(torch.stack(steps, 2), o_ref) < 1e-12 and rel_err(state, s_ref) < 1e-12


def test_zero_initial_state_by_default_and_chunks_compose(rel_err):
    q, k, v, log_a, _ = inputs(40)
    o, s = chunk_gla(q, k, v, log_a, scale=1.0, chunk_size=8)
    o_ref, s_ref = gla_loop(q, k, v, log_a, 1.0, torch.zeros_like(k[:, :, 0, :, None] * v[:, :, 0, None, :]))
    assert rel_err(o, o_ref) < 1e-12 and rel_err(s, s_ref) < 1e-12
    o1, s1 = chunk_gla(q[:, :, :13], k[:, :, :13], v[:, :, :13], log_a[:, :, :13], scale=1.0, chunk_size=8)
    o2, s2 = chunk_gla(q[:, :, 13:], k[:, :, 13:], v[:, :, 13:], log_a[:, :, 13:], scale=1.0, initial_state=s1, chunk_size=8)
    assert rel_err(torch.cat([o1, o2], 2), o_ref) < 1e-12 and rel_err(s2, s_ref) < 1e-12


def test_gradients_equal_the_loops():
    q, k, v, log_a, s0 = (t.requires_grad_() for t in inputs(21, seed=3))
    w = torch.randn(2, 3, 21, 4, dtype=F64)
    o, s = chunk_gla(q, k, v, log_a, scale=0.5, initial_state=s0, chunk_size=8, sub_chunk=4)
    got = torch.autograd.grad((o * w).sum() + s.sum(), (q, k, v, log_a, s0))
    o_ref, s_ref = gla_loop(q, k, v, log_a, 0.5, s0)
    want = torch.autograd.grad((o_ref * w).sum() + s_ref.sum(), (q, k, v, log_a, s0))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-11, rtol=1e-10)


def test_fp32_stays_finite_and_accurate_under_strong_decay():
    """Decays down to e^-60 per step: the naive factorisation q e^{b} · k e^{-b} overflows in fp32; the chunked form must not."""
    q, k, v, log_a, s0 = inputs(128, seed=5, spread=30.0)
    log_a = log_a.clamp_min(-60.0)
    o_ref, s_ref = gla_loop(q, k, v, log_a, 0.5, s0)
    o, s = chunk_gla(*(t.float() for t in (q, k, v, log_a)), scale=0.5, initial_state=s0.float(), chunk_size=64)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    assert (o.double() - o_ref).abs().max() < 1e-4 * o_ref.abs().max()
    assert (s.double() - s_ref).abs().max() < 1e-4 * s_ref.abs().max()
