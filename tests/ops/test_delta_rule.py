"""``ssmgraph.ops.delta_rule``: the chunked WY form against the plain loop of the papers' equations."""

from __future__ import annotations

import pytest
import torch

from ssmgraph.ops.delta_rule import chunk_delta_rule, delta_rule_step

F64 = torch.float64


def paper_loop(q, k, v, beta, log_alpha, scale, s0):
    """The papers' convention, S ∈ R^{V×K}: S_t = S_{t-1} (α_t (I − β_t k_t k_t^T)) + β_t v_t k_t^T, o_t = S_t q_t.

    Returns o and the final state transposed to K×V (the library's layout)."""
    s, outs = s0.transpose(-1, -2).clone(), []
    eye = torch.eye(q.shape[-1], dtype=q.dtype)
    for t in range(q.shape[2]):
        kt, vt, bt = k[:, :, t], v[:, :, t], beta[:, :, t, None, None]
        alpha = 1.0 if log_alpha is None else torch.exp(log_alpha[:, :, t])[..., None, None]
        s = s @ (alpha * (eye - bt * kt.unsqueeze(-1) * kt.unsqueeze(-2))) + bt * vt.unsqueeze(-1) * kt.unsqueeze(-2)
        outs.append((s @ (scale * q[:, :, t]).unsqueeze(-1)).squeeze(-1))
    return torch.stack(outs, 2), s.transpose(-1, -2)


def inputs(length, dtype=F64, seed=0, batch=2, heads=3, dk=5, dv=4, beta_max=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, dk, generator=g, dtype=dtype)
    k = torch.nn.functional.normalize(torch.randn(batch, heads, length, dk, generator=g, dtype=dtype), dim=-1)
    v = torch.randn(batch, heads, length, dv, generator=g, dtype=dtype)
    beta = beta_max * torch.rand(batch, heads, length, generator=g, dtype=dtype)
    log_alpha = -2.0 * torch.rand(batch, heads, length, generator=g, dtype=dtype)
    s0 = torch.randn(batch, heads, dk, dv, generator=g, dtype=dtype)
    return q, k, v, beta, log_alpha, s0


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize(("length", "chunk"), [(1, 64), (7, 4), (37, 16), (64, 16), (100, 32), (50, 64)])
def test_chunked_equals_paper_loop_and_steps(gated, length, chunk, rel_err):
    q, k, v, beta, log_alpha, s0 = inputs(length, seed=length)
    log_alpha = log_alpha if gated else None
    o_ref, s_ref = paper_loop(q, k, v, beta, log_alpha, 0.6, s0)
    o, s = chunk_delta_rule(q, k, v, beta, scale=0.6, log_alpha=log_alpha, initial_state=s0, chunk_size=chunk)
    assert rel_err(o, o_ref) < 1e-12 and rel_err(s, s_ref) < 1e-12
    state, steps = s0, []
    for t in range(length):
        la = None if log_alpha is None else log_alpha[:, :, t]
        o_t, state = delta_rule_step(q[:, :, t], k[:, :, t], v[:, :, t], beta[:, :, t], state, scale=0.6, log_alpha=la)
        steps.append(o_t)
    assert rel_err(torch.stack(steps, 2), o_ref) < 1e-12 and rel_err(state, s_ref) < 1e-12


def test_negative_eigenvalues_and_zero_initial_state(rel_err):
    q, k, v, beta, log_alpha, s0 = inputs(45, seed=9, beta_max=2.0)  # β ∈ (0, 2): I − β k kᵀ reflects
    o_ref, s_ref = paper_loop(q, k, v, beta, log_alpha, 1.0, torch.zeros_like(s0))
    o, s = chunk_delta_rule(q, k, v, beta, scale=1.0, log_alpha=log_alpha, chunk_size=16)
    assert rel_err(o, o_ref) < 1e-11 and rel_err(s, s_ref) < 1e-11


@pytest.mark.parametrize("gated", [False, True])
def test_gradients_equal_the_loops(gated):
    q, k, v, beta, log_alpha, s0 = (t.requires_grad_() for t in inputs(19, seed=4))
    la = log_alpha if gated else None
    w = torch.randn(2, 3, 19, 4, dtype=F64)
    o, s = chunk_delta_rule(q, k, v, beta, scale=0.5, log_alpha=la, initial_state=s0, chunk_size=8)
    wrt = (q, k, v, beta, s0) + ((log_alpha,) if gated else ())
    got = torch.autograd.grad((o * w).sum() + s.sum(), wrt)
    o_ref, s_ref = paper_loop(q, k, v, beta, la, 0.5, s0)
    want = torch.autograd.grad((o_ref * w).sum() + s_ref.sum(), wrt)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-11, rtol=1e-10)


def test_fp32_close_to_fp64_over_long_sequences():
    q, k, v, beta, log_alpha, s0 = inputs(512, seed=2)
    log_alpha = 0.01 * log_alpha  # slow decay: the state carries far
    o_ref, s_ref = chunk_delta_rule(q, k, v, beta, scale=0.5, log_alpha=log_alpha, initial_state=s0)
    o, s = chunk_delta_rule(
        *(t.float() for t in (q, k, v, beta)), scale=0.5, log_alpha=log_alpha.float(), initial_state=s0.float()
    )
    assert (o.double() - o_ref).abs().max() < 1e-4 * o_ref.abs().max()
    assert (s.double() - s_ref).abs().max() < 1e-4 * s_ref.abs().max()


def test_fp32_stays_finite_under_strong_decay():
    """γ_t underflows to 0 in fp32 within a chunk (decays e^-5 per step): γ_C/γ_s must not become 0/0."""
    q, k, v, beta, log_alpha, s0 = inputs(160, seed=6)
    log_alpha = 2.5 * log_alpha
    o_ref, s_ref = paper_loop(q, k, v, beta, log_alpha, 0.5, s0)
    o, s = chunk_delta_rule(
        *(t.float() for t in (q, k, v, beta)), scale=0.5, log_alpha=log_alpha.float(), initial_state=s0.float()
    )
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    assert (o.double() - o_ref).abs().max() < 1e-4 * o_ref.abs().max()
    assert (s.double() - s_ref).abs().max() < 1e-4 * s_ref.abs().max()
