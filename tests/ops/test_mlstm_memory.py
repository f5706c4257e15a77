"""The mLSTM memory: chunked form == the paper's equations as a plain loop == the stabilised step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssmgraph.ops.mlstm import mlstm_chunked, mlstm_step, zero_mlstm_state

F64 = torch.float64


def inputs(B=2, H=3, L=13, d=4, scale_i=2.0, exp_forget=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, d, generator=gen, dtype=F64) for _ in range(3))
    log_i = scale_i * torch.randn(B, H, L, generator=gen, dtype=F64)
    f_raw = 2 * torch.randn(B, H, L, generator=gen, dtype=F64) + 1
    log_f = 0.3 * f_raw if exp_forget else F.logsigmoid(f_raw)
    return q, k, v, log_i, log_f


def paper_loop(q, k, v, log_i, log_f):
    """Eqs. 19-27 as written, without a stabiliser: C_t = f C + i v kᵀ, n_t = f n + i k,
    h_t = C q / max(|nᵀq|, 1), k scaled by 1/√d (safe in fp64 for moderate gates)."""
    B, H, L, d = q.shape
    C = torch.zeros(B, H, d, d, dtype=q.dtype)
    n = torch.zeros(B, H, d, dtype=q.dtype)
    hs = []
    for t in range(L):
        i, f = torch.exp(log_i[..., t]), torch.exp(log_f[..., t])
        kt = k[:, :, t] / math.sqrt(d)
        C = f[..., None, None] * C + i[..., None, None] * torch.einsum("bhv,bhk->bhvk", v[:, :, t], kt)
        n = f[..., None] * n + i[..., None] * kt
        num = torch.einsum("bhvk,bhk->bhv", C, q[:, :, t])
        den = torch.einsum("bhk,bhk->bh", n, q[:, :, t]).abs().clamp_min(1.0)
        hs.append(num / den[..., None])
    return torch.stack(hs, 2)


def step_loop(q, k, v, log_i, log_f, state=None, eps=1e-6):
    B, H, L, d = q.shape
    state = zero_mlstm_state(B, H, d, device=None, dtype=q.dtype) if state is None else state
    hs = []
    for t in range(L):
        h, state = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], log_i[..., t], log_f[..., t], state, eps)
        hs.append(h)
    return torch.stack(hs, 2), state


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("exp_forget", [False, True])
@pytest.mark.parametrize("chunk", [1, 4, 5, 13, 64])
def test_chunked_equals_paper_equations_and_steps(chunk, exp_forget):
    q, k, v, log_i, log_f = inputs(exp_forget=exp_forget)
    h, state = mlstm_chunked(q, k, v, log_i, log_f, chunk=chunk, eps=0.0)
    assert rel(h, paper_loop(q, k, v, log_i, log_f)) < 1e-12
    hs, ss = step_loop(q, k, v, log_i, log_f, eps=0.0)
    assert rel(h, hs) < 1e-12
    for a, b in zip(state, ss):
        assert rel(a, b) < 1e-12


def test_large_gates_stay_finite_and_equal_the_step():
    """Input gates up to e^80 and exponential forget gates overflow the unstabilised form in fp32,
    not the stabilised one; chunked and stepped agree with an initial state carried."""
    q, k, v, log_i, log_f = inputs(L=21, scale_i=40.0, exp_forget=True, seed=3)
    q, k, v, log_i, log_f = (t.float() for t in (q, k, v, log_i, log_f))
    _, s0 = step_loop(q[:, :, :3], k[:, :, :3], v[:, :, :3], log_i[..., :3], log_f[..., :3])
    rest = (t[:, :, 3:] for t in (q, k, v, log_i, log_f))
    q2, k2, v2, i2, f2 = rest
    h, s = mlstm_chunked(q2, k2, v2, i2, f2, s0, chunk=8)
    hs, ss = step_loop(q2, k2, v2, i2, f2, s0)
    assert torch.isfinite(h).all() and all(torch.isfinite(t).all() for t in s)
    assert rel(h, hs) < 1e-4
    assert all(rel(a, b) < 1e-4 for a, b in zip(s, ss))


def test_padding_positions_leave_the_state_and_gradients_equal():
    q, k, v, log_i, log_f = inputs(L=10)
    for t in (q, k, v, log_i, log_f):
        t.requires_grad_()
    mask = torch.arange(10) < 6
    pad_i = log_i.masked_fill(~mask, -math.inf)
    pad_f = log_f.masked_fill(~mask, 0.0)
    h, state = mlstm_chunked(q, k, v, pad_i, pad_f, chunk=4)
    h6, state6 = mlstm_chunked(q[:, :, :6], k[:, :, :6], v[:, :, :6], log_i[..., :6], log_f[..., :6], chunk=4)
    assert rel(h[:, :, :6], h6) < 1e-12
    assert all(rel(a, b) < 1e-12 for a, b in zip(state, state6))
    hs, _ = step_loop(q, k, v, log_i, log_f)
    w = torch.randn_like(h)
    g_chunk = torch.autograd.grad((mlstm_chunked(q, k, v, log_i, log_f, chunk=3)[0] * w).sum(), (q, k, v, log_i, log_f))
    g_step = torch.autograd.grad((hs * w).sum(), (q, k, v, log_i, log_f))
    assert all(rel(a, b) < 1e-10 for a, b in zip(g_chunk, g_step))
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(h.sum(), (q, k, v, log_i, log_f)))
