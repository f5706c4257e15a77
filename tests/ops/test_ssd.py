"""The SSD scan of Mamba-2: chunked form == the recurrence written out == token steps == the quadratic (dual) form."""

from __future__ import annotations

import pytest
import torch

from ssmgraph.ops import ssd
from ssmgraph.ops.ssd import segsum, ssd_chunked, ssd_recurrent, ssd_step

F64 = torch.float64


def inputs(batch=2, length=13, heads=4, p=3, groups=2, n=5, dtype=F64, scale=1.0):
    """x, Δ, A, B, C, D, h0 of a small problem: Δ in (0, 0.5·scale), A in (-3, 0)."""
    x = torch.randn(batch, length, heads, p, dtype=dtype)
    dt = torch.rand(batch, length, heads, dtype=dtype) * 0.5 * scale
    A = -torch.rand(heads, dtype=dtype) * 3
    B, C = torch.randn(batch, length, groups, n, dtype=dtype), torch.randn(batch, length, groups, n, dtype=dtype)
    D = torch.randn(heads, dtype=dtype)
    h0 = torch.randn(batch, heads, p, n, dtype=dtype)
    return x, dt, A, B, C, D, h0


def equations(x, dt, A, B, C, D, h0):
    """The recurrence of the paper, head by head and step by step, in fp64 (no code shared with ssmgraph)."""
    _, length, heads, _ = x.shape
    groups = B.shape[2]
    h = h0.clone()
    y = torch.zeros_like(x)
    for t in range(length):
        for k in range(heads):
            g = k // (heads // groups)
            a = torch.exp(dt[:, t, k] * A[k])  # (b,)
            h[:, k] = a[:, None, None] * h[:, k] + (dt[:, t, k, None] * x[:, t, k])[:, :, None] * B[:, t, g][:, None, :]
            y[:, t, k] = torch.einsum("bpn,bn->bp", h[:, k], C[:, t, g]) + D[k] * x[:, t, k]
    return y, h


def quadratic(x, dt, A, B, C, D):
    """The dual form y = M x with M[t, s] = C_tᵀ B_s exp(Σ_{k=s+1..t} Δ_k A) Δ_s for s ≤ t (zero initial state)."""
    _, length, heads, _ = x.shape
    groups = B.shape[2]
    Bh, Ch = (t.repeat_interleave(heads // groups, dim=2) for t in (B, C))
    logs = torch.cumsum(dt * A, dim=1)  # (b, L, H)
    diff = logs[:, :, None, :] - logs[:, None, :, :]  # (b, t, s, H): Σ_{k=s+1..t}
    causal = torch.ones(length, length, dtype=torch.bool).tril()[None, :, :, None]
    M = torch.einsum("bthn,bshn->btsh", Ch, Bh) * torch.where(causal, diff, float("-inf")).exp() * dt[:, None, :, :]
    return torch.einsum("btsh,bshp->bthp", M, x) + D[:, None] * x


@pytest.mark.parametrize("chunk", [1, 3, 4, 13, 64])
def test_chunked_equals_the_equations_and_the_steps(rel_err, chunk):
    x, dt, A, B, C, D, h0 = inputs()
    want_y, want_h = equations(x, dt, A, B, C, D, h0)
    y, h = ssd_chunked(x, dt, A, B, C, chunk, D=D, initial_state=h0, return_final_state=True)
    assert rel_err(y, want_y) < 1e-12 and rel_err(h, want_h) < 1e-12
    y_r, h_r = ssd_recurrent(x, dt, A, B, C, D=D, initial_state=h0, return_final_state=True)
    assert rel_err(y_r, want_y) < 1e-12 and rel_err(h_r, want_h) < 1e-12


@pytest.mark.parametrize("elements", [1, 2 * 4 * 3 * 3 * 2])  # segments of one chunk, of two chunks
def test_long_sequences_in_segments_equal_the_equations(rel_err, monkeypatch, elements):
    monkeypatch.setattr(ssd, "SEGMENT_ELEMENTS", elements)  # b·H·Q·Q = 2·4·3·3 per chunk
    x, dt, A, B, C, D, h0 = inputs(length=13)
    leaves = [t.requires_grad_() for t in (x, dt, A, B, C, D, h0)]
    want_y, want_h = equations(x, dt, A, B, C, D, h0)
    y, h = ssd_chunked(x, dt, A, B, C, 3, D=D, initial_state=h0.mT.contiguous().mT, return_final_state=True)
    assert rel_err(y, want_y) < 1e-12 and rel_err(h, want_h) < 1e-12
    grads = torch.autograd.grad(y.sum() + h.sum(), leaves)
    want = torch.autograd.grad(sum(t.sum() for t in ssd_recurrent(x, dt, A, B, C, D, h0, return_final_state=True)), leaves)
    assert all(rel_err(a, b) < 1e-10 for a, b in zip(grads, want, strict=True))


def test_chunked_equals_the_quadratic_dual_form(rel_err):
    x, dt, A, B, C, D, _ = inputs(length=17, heads=6, groups=3)
    assert rel_err(ssd_chunked(x, dt, A, B, C, 5, D=D), quadratic(x, dt, A, B, C, D)) < 1e-12


@pytest.mark.parametrize("chunk", [2, 5, 16])
def test_gradients_of_chunked_equal_the_recurrence(rel_err, chunk):
    leaves = [t.requires_grad_() for t in inputs(length=11)]  # x, Δ, A, B, C, D, h0
    w = torch.randn(2, 11, 4, 3, dtype=F64)

    def grads(y, h):
        return torch.autograd.grad((y * w).sum() + h.square().sum(), leaves)

    x, dt, A, B, C, D, h0 = leaves
    chunked = grads(*ssd_chunked(x, dt, A, B, C, chunk, D=D, initial_state=h0, return_final_state=True))
    recurrent = grads(*ssd_recurrent(x, dt, A, B, C, D=D, initial_state=h0, return_final_state=True))
    for name, a, b in zip(["x", "dt", "A", "B", "C", "D", "h0"], chunked, recurrent, strict=True):
        assert rel_err(a, b) < 1e-10, name


def test_padding_of_the_last_chunk_keeps_the_final_state(rel_err):
    x, dt, A, B, C, D, h0 = inputs(length=10)
    _, h_whole = ssd_chunked(x, dt, A, B, C, 10, D=D, initial_state=h0, return_final_state=True)
    for chunk in (3, 4, 7):  # 10 = 3·3 + 1, 2·4 + 2, 7 + 3: the last chunk is padded
        _, h = ssd_chunked(x, dt, A, B, C, chunk, D=D, initial_state=h0, return_final_state=True)
        assert rel_err(h, h_whole) < 1e-12


def test_state_carried_between_calls_equals_one_call(rel_err):
    x, dt, A, B, C, D, h0 = inputs(length=12)
    y, h = ssd_chunked(x, dt, A, B, C, 4, D=D, initial_state=h0, return_final_state=True)
    y1, h1 = ssd_chunked(x[:, :5], dt[:, :5], A, B[:, :5], C[:, :5], 4, D=D, initial_state=h0, return_final_state=True)
    y2, h2 = ssd_chunked(x[:, 5:], dt[:, 5:], A, B[:, 5:], C[:, 5:], 4, D=D, initial_state=h1, return_final_state=True)
    assert rel_err(torch.cat([y1, y2], 1), y) < 1e-12 and rel_err(h2, h) < 1e-12


def test_step_is_one_token_of_the_recurrence(rel_err):
    x, dt, A, B, C, D, h0 = inputs(length=1)
    y, h = ssd_step(h0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D)
    want_y, want_h = equations(x, dt, A, B, C, D, h0)
    assert rel_err(y, want_y[:, 0]) < 1e-14 and rel_err(h, want_h) < 1e-14


def test_segsum_is_the_masked_sum_of_segments():
    a = torch.randn(3, 6, dtype=F64)
    seg = segsum(a)
    for l in range(6):
        for s in range(6):
            want = a[:, s + 1 : l + 1].sum(-1) if s <= l else torch.full((3,), float("-inf"), dtype=F64)
            torch.testing.assert_close(seg[:, l, s], want, rtol=0, atol=1e-14)


def test_strong_decay_in_fp32_stays_accurate_and_finite(rel_err):
    """Δ·A down to -80 per step: the chunk's cumulative log-decay reaches thousands. Exponents are segment sums
    (never a difference of long cumulative sums), so fp32 matches fp64 and no gradient is NaN."""
    x, dt, A, B, C, D, h0 = inputs(length=40, scale=60.0)
    A = A - 1.0
    want = ssd_recurrent(x, dt, A, B, C, D=D, initial_state=h0)
    leaves = [t.float().requires_grad_() for t in (x, dt, A, B, C)]
    y = ssd_chunked(*leaves, 32, D=D.float(), initial_state=h0.float())
    assert y.dtype == torch.float32 and rel_err(y.double(), want) < 1e-5
    y.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)


def test_dtypes_fp32_inputs_compute_in_fp32_and_fp64_stays_fp64():
    x, dt, A, B, C, D, h0 = inputs()
    y64, h64 = ssd_chunked(x, dt, A, B, C, 4, D=D, initial_state=h0, return_final_state=True)
    assert y64.dtype == h64.dtype == F64
    y32, h32 = ssd_chunked(*(t.float() for t in (x, dt, A, B, C)), 4, D=D.float(), return_final_state=True)
    assert y32.dtype == h32.dtype == torch.float32
    y16 = ssd_chunked(x.bfloat16(), *(t.float() for t in (dt, A, B, C)), 4)
    assert y16.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("change", "message"),
    [({"length": 0}, "at least one time step"), ({"chunk": 0}, "chunk_size"), ({"groups": 3}, "3 groups")],
)
def test_bad_arguments_are_refused(change, message):
    length, chunk, groups = change.get("length", 4), change.get("chunk", 2), change.get("groups", 2)
    x, dt, A, B, C, _, _ = inputs(length=length, groups=groups)
    with pytest.raises(ValueError, match=message):
        ssd_chunked(x, dt, A, B, C, chunk)
