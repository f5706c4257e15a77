"""mix.h3 against independent references and the mixer protocol."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from ssmgraph.blocks.h3 import H3
from ssmgraph.registry.specs import ShapeError, TensorType

F64, F32 = torch.float64, torch.float32
DIM = 6
VARIANTS = [
    {},
    {"heads": 2},
    {"inner": "s4", "heads": 3, "l_max": 8},
    {"d_state": 20, "heads": 3},  # shift width longer than the test sequences
]


def build(**over):
    m = H3.factory([TensorType(("batch", "seq", DIM))], **{**H3.defaults(), "d_state": 8, **over})
    with torch.no_grad():  # a generic trainable B instead of e1 exercises the full shift-SSM algebra
        m.shift.B.add_(0.3 * torch.randn_like(m.shift.B))
    return m


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def flat(state):
    return torch.cat([s.reshape(s.shape[0], -1).to(torch.complex128) for s in state], dim=1)


def step_loop(m, x, state=None):
    s = m.init_state(x.shape[0], dtype=x.dtype) if state is None else state
    ys = []
    for x_t in x.unbind(1):
        y_t, s = m.step(x_t, s)
        ys.append(y_t)
    return torch.stack(ys, 1), s


def test_spec_is_well_formed():
    assert H3.validate() == []
    caps = H3.capabilities(H3.defaults())
    assert caps.causal and caps.step and not caps.bidirectional


def test_shape_rule():
    args = H3.defaults()
    assert H3.shape([TensorType(("b", "l", 8))], **{**args, "heads": 4}).dim == 8
    with pytest.raises(ShapeError, match="divisible by heads 3"):
        H3.shape([TensorType(("b", "l", 8))], **{**args, "heads": 3})
    with pytest.raises(ShapeError, match="even"):
        H3.shape([TensorType(("b", "l", 8))], **{**args, "d_state": 5})


@pytest.mark.parametrize("over", VARIANTS)
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-8), (F32, 1e-4)])
def test_forward_equals_step_loop_values_and_gradients(over, dtype, tol):
    torch.manual_seed(0)
    m = build(**over).to(dtype)
    x = torch.randn(2, 12, DIM, dtype=dtype, requires_grad=True)
    w = torch.randn(2, 12, DIM, dtype=dtype)
    y, s = m(x, return_state=True)
    ys, ss = step_loop(m, x)
    assert rel_err(ys, y) < tol and rel_err(flat(ss), flat(s)) < tol
    params = [x, *m.parameters()]
    g_conv = torch.autograd.grad((y * w).sum(), params)
    g_step = torch.autograd.grad((ys * w).sum(), params)
    for a, b in zip(g_conv, g_step):
        assert rel_err(a, b) < tol


def test_shift_ssm_equals_dense_shift_matrix_system():
    torch.manual_seed(1)
    shift = build().double().shift
    N, L = shift.N, 11
    S = torch.diag(torch.ones(N - 1, dtype=F64), -1)  # A: ones on the subdiagonal
    u = torch.randn(2, DIM, L, dtype=F64)
    x0 = torch.randn(2, DIM, N, dtype=F64)
    x, ys = x0, []
    for t in range(L):
        x = x @ S.T + shift.B * u[..., t, None]
        ys.append((shift.C * x).sum(-1))
    y, state = shift(u, x0, return_state=True)
    assert rel_err(y, torch.stack(ys, -1)) < 1e-12 and rel_err(state, x) < 1e-12
    k = shift.kernel()  # k_l = C S^l B
    ref = torch.stack([(shift.C * (shift.B @ torch.linalg.matrix_power(S, l).T)).sum(-1) for l in range(N)], -1)
    assert rel_err(k, ref) < 1e-12


def test_matches_the_reference_layout_and_formula():
    """Recompute H3 with the reference's einops layout (heads 'b (h d1) l', output '(d2 h)')."""
    torch.manual_seed(2)
    m = build(heads=2).double()
    x = torch.randn(2, 10, DIM, dtype=F64)
    hd = DIM // 2
    q, k, v = (rearrange(p(x), "b l d -> b d l") for p in (m.q_proj, m.k_proj, m.v_proj))
    kk = m.shift.kernel()
    k_shift = torch.zeros_like(k)
    for t in range(10):
        for i in range(min(kk.shape[-1], t + 1)):
            k_shift[..., t] += kk[:, i] * k[..., t - i]
    k = k_shift + m.D_k[:, None] * k
    kv = rearrange(k, "b (h d1) l -> b d1 1 h l", d1=hd) * rearrange(v, "b (h d2) l -> b 1 d2 h l", d2=hd)
    K = m.ssm.kernel(10)[0]  # (H, L)
    y = torch.zeros_like(kv)
    for t in range(10):
        for s in range(t + 1):
            y[..., t] += K[:, t - s] * kv[..., s]
    y = y + m.D[:, None] * kv
    out = (y * rearrange(q, "b (h d1) l -> b d1 1 h l", d1=hd)).sum(1)
    ref = m.out_proj(rearrange(out, "b d h l -> b l (d h)"))
    assert rel_err(m(x), ref) < 1e-12


def test_causality():
    torch.manual_seed(3)
    for over in ({}, {"inner": "s4", "l_max": 8}):
        m = build(**over).double()
        x = torch.randn(2, 16, DIM, dtype=F64)
        y = m(x)
        for t in (0, 7, 14):
            x2 = x.clone()
            x2[:, t + 1 :] += torch.randn_like(x2[:, t + 1 :])
            assert (m(x2)[:, : t + 1] - y[:, : t + 1]).abs().max() <= 1e-12 * y.abs().max()


@pytest.mark.parametrize("split", [1, 3, 9])
@pytest.mark.parametrize("inner", ["s4d", "s4"])
def test_chunked_with_carried_state_equals_one_pass(split, inner):
    torch.manual_seed(4)
    m = build(inner=inner, heads=3, l_max=8).double()
    x = torch.randn(2, 12, DIM, dtype=F64)
    y, s = m(x, return_state=True)
    y1, s1 = m(x[:, :split], return_state=True)
    y2, s2 = m(x[:, split:], state=s1, return_state=True)
    assert rel_err(torch.cat([y1, y2], 1), y) < 1e-10 and rel_err(flat(s2), flat(s)) < 1e-10


def test_mask_gives_the_state_after_the_last_valid_token():
    torch.manual_seed(5)
    m = build(heads=3).double()
    x = torch.randn(3, 10, DIM, dtype=F64)
    lengths = [10, 6, 2]
    mask = torch.arange(10)[None] < torch.tensor(lengths)[:, None]
    _, s0 = m(torch.randn(3, 5, DIM, dtype=F64), return_state=True)  # a non-zero initial state
    y, s = m(x, state=s0, return_state=True, mask=mask)
    for b, n in enumerate(lengths):
        sb0 = tuple(t[b : b + 1] for t in s0)
        yb, sb = m(x[b : b + 1, :n], state=sb0, return_state=True)
        assert rel_err(y[b : b + 1, :n], yb) < 1e-12
        assert rel_err(flat(tuple(t[b : b + 1] for t in s)), flat(sb)) < 1e-12


def test_gradients_reach_every_parameter(grads_reach_all):
    torch.manual_seed(7)
    for over in ({"heads": 2}, {"inner": "s4", "l_max": 8}):
        m = build(**over).double()
        m(torch.randn(2, 8, DIM, dtype=F64)).square().sum().backward()
        grads_reach_all(m)
        for name in ("shift.B", "ssm.log_dt", "ssm.B"):
            assert m.get_parameter(name)._optim == {"lr": 1e-3, "weight_decay": 0.0}


def test_autocast_keeps_the_ssm_in_float32():
    torch.manual_seed(8)
    m = build()
    x = torch.randn(2, 12, DIM)
    ref = m(x)
    seen = []
    m.ssm.register_forward_hook(lambda mod, inp, out: seen.append(out[0].dtype))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        y = m(x)
        y.float().square().sum().backward()
    assert seen == [F32]
    assert all(p.dtype == F32 and p.grad is not None and p.grad.dtype == F32 for p in m.parameters())
    assert rel_err(y.float(), ref) < 5e-2
