"""mix.s5 against independent references and the mixer protocol."""

from __future__ import annotations

import pytest
import torch

from ssmgraph.blocks.s5 import S5
from ssmgraph.ops.hippo import hippo_normal
from ssmgraph.registry.specs import ShapeError, TensorType

F64, F32 = torch.float64, torch.float32
C128 = torch.complex128
DIM = 6
VARIANTS = [
    {},
    {"disc": "bilinear", "conj_sym": False, "C_init": "lecun_normal", "activation": "full_glu"},
    {"C_init": "complex_normal", "activation": "half_glu2", "clip_eigs": True, "blocks": 1},
    {"activation": "gelu", "step_rescale": 2.0},
]


def build(**over):
    return S5.factory([TensorType(("batch", "seq", DIM))], **{**S5.defaults(), "d_state": 16, "blocks": 2, **over})


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def step_loop(m, x, state=None):
    s = m.init_state(x.shape[0], dtype=x.dtype) if state is None else state
    ys = []
    for x_t in x.unbind(1):
        y_t, s = m.step(x_t, s)
        ys.append(y_t)
    return torch.stack(ys, 1), s


def test_spec_is_well_formed():
    assert S5.validate() == []
    assert S5.capabilities(S5.defaults()).step
    assert not S5.capabilities({**S5.defaults(), "bidirectional": True}).causal


def test_shape_rule():
    args = {**S5.defaults(), "d_state": 24}
    with pytest.raises(ShapeError, match="divisible"):
        S5.shape([TensorType(("b", "l", 8))], **{**args, "blocks": 5})
    with pytest.raises(ShapeError, match="even block"):
        S5.shape([TensorType(("b", "l", 8))], **{**args, "blocks": 8})
    assert S5.shape([TensorType(("b", "l", 8))], **{**args, "blocks": 8, "conj_sym": False}).dim == 8
    with pytest.raises(ShapeError, match="dt_min must be positive"):
        S5.shape([TensorType(("b", "l", 8))], **{**args, "blocks": 2, "dt_min": 0.0})


@pytest.mark.parametrize("over", VARIANTS)
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-8), (F32, 1e-4)])
def test_forward_equals_step_loop_values_and_gradients(over, dtype, tol):
    torch.manual_seed(0)
    m = build(**over).to(dtype)
    x = torch.randn(2, 12, DIM, dtype=dtype, requires_grad=True)
    w = torch.randn(2, 12, DIM, dtype=dtype)
    y, s = m(x, return_state=True)
    ys, ss = step_loop(m, x)
    assert rel_err(ys, y) < tol and rel_err(ss, s) < tol
    params = [x, *m.parameters()]
    g_scan = torch.autograd.grad((y * w).sum(), params)
    g_step = torch.autograd.grad((ys * w).sum(), params)
    for a, b in zip(g_scan, g_step):
        assert rel_err(a, b) < tol


def test_ssm_equals_explicit_recurrences_both_directions():
    torch.manual_seed(1)
    ssm = build(bidirectional=True).double().ssm
    u = torch.randn(2, 9, DIM, dtype=F64)
    dA, dB, C = ssm.discretized()
    P = ssm.Ps
    fwd, bwd = [], []
    x = torch.zeros(2, P, dtype=C128)
    for t in range(9):
        x = dA * x + u[:, t].to(C128) @ dB.T
        fwd.append(x)
    x = torch.zeros(2, P, dtype=C128)
    for t in reversed(range(9)):
        x = dA * x + u[:, t].to(C128) @ dB.T
        bwd.insert(0, x)
    ref = 2 * (torch.stack(fwd, 1) @ C[:, :P].T + torch.stack(bwd, 1) @ C[:, P:].T).real + ssm.D * u
    y, _ = ssm(u)
    assert rel_err(y, ref) < 1e-12


def test_conjugate_symmetry_equals_the_full_complex_system():
    """T12: P/2 states with 2 Re(C x) equal the full-P system holding both halves of each pair."""
    torch.manual_seed(2)
    half = build(conj_sym=True).double()
    full = build(conj_sym=False).double()
    h, f = half.ssm, full.ssm
    with torch.no_grad():
        f.Lambda_re.copy_(torch.cat([h.Lambda_re, h.Lambda_re]))
        f.Lambda_im.copy_(torch.cat([h.Lambda_im, -h.Lambda_im]))
        f.log_step.copy_(torch.cat([h.log_step, h.log_step]))
        B = torch.view_as_complex(h.B)
        f.B.copy_(torch.view_as_real(torch.cat([B, B.conj()])))
        C = torch.view_as_complex(h.C)
        f.C.copy_(torch.view_as_real(torch.cat([C, C.conj()], dim=-1)))
        f.D.copy_(h.D)
        full.out2.load_state_dict(half.out2.state_dict())
    x = torch.randn(2, 11, DIM, dtype=F64)
    assert rel_err(full(x), half(x)) < 1e-12


def test_init_is_block_diagonal_hippo_n():
    m = build(d_state=16, blocks=2, conj_sym=False, dt_min=1e-3, dt_max=1e-1, ssm_lr=2e-3).double()
    ssm = m.ssm
    lam, V, _, _ = hippo_normal("legs", 8)
    assert torch.allclose(ssm.Lambda_re, torch.full((16,), -0.5, dtype=F64))
    assert torch.allclose(ssm.Lambda_im, lam.imag.repeat(2).to(F64), atol=1e-5)
    # B~ = V^-1 B with B real: V B~ is real
    Vb = torch.block_diag(V, V)
    assert (Vb @ torch.view_as_complex(ssm.B)).imag.abs().max() < 1e-5
    step = torch.exp(ssm.log_step)
    assert ssm.log_step.shape == (16,) and (step >= 1e-3 * (1 - 1e-6)).all() and (step <= 0.1 * (1 + 1e-6)).all()
    half = build(d_state=16, blocks=2).ssm
    assert half.Lambda_re.shape == (8,) and torch.allclose(half.Lambda_im.double(), lam.imag[:4].repeat(2), atol=1e-5)
    for name in ("Lambda_re", "Lambda_im", "B", "log_step"):
        assert getattr(ssm, name)._optim == {"lr": 2e-3, "weight_decay": 0.0}
    assert not hasattr(ssm.C, "_optim") and not hasattr(ssm.D, "_optim")


def test_causality():
    torch.manual_seed(3)
    m = build().double()
    x = torch.randn(2, 16, DIM, dtype=F64)
    y = m(x)
    for t in (0, 7, 14):
        x2 = x.clone()
        x2[:, t + 1 :] += torch.randn_like(x2[:, t + 1 :])
        assert (m(x2)[:, : t + 1] - y[:, : t + 1]).abs().max() <= 1e-12 * y.abs().max()


@pytest.mark.parametrize("split", [1, 5, 11])
def test_chunked_with_carried_state_equals_one_pass(split):
    torch.manual_seed(4)
    m = build().double()
    x = torch.randn(2, 12, DIM, dtype=F64)
    x0 = torch.randn(2, 8, dtype=C128)
    y, s = m(x, state=x0, return_state=True)
    y1, s1 = m(x[:, :split], state=x0, return_state=True)
    y2, s2 = m(x[:, split:], state=s1, return_state=True)
    assert rel_err(torch.cat([y1, y2], 1), y) < 1e-10 and rel_err(s2, s) < 1e-10


def test_mask_gives_the_state_after_the_last_valid_token():
    torch.manual_seed(5)
    m = build().double()
    x = torch.randn(3, 10, DIM, dtype=F64)
    lengths = [10, 6, 0]
    mask = torch.arange(10)[None] < torch.tensor(lengths)[:, None]
    x0 = torch.randn(3, 8, dtype=C128)
    y, s = m(x, state=x0, return_state=True, mask=mask)
    for b, n in enumerate(lengths):
        if n == 0:
            assert torch.equal(s[b], x0[b])
            continue
        yb, sb = m(x[b : b + 1, :n], state=x0[b : b + 1], return_state=True)
        assert rel_err(y[b : b + 1, :n], yb) < 1e-12 and rel_err(s[b : b + 1], sb) < 1e-12


def test_bidirectional_mask_hides_padding():
    torch.manual_seed(6)
    m = build(bidirectional=True).double()
    x = torch.randn(2, 10, DIM, dtype=F64)
    mask = torch.arange(10)[None] < torch.tensor([10, 7])[:, None]
    y = m(x, mask=mask)
    x2 = x.clone()
    x2[1, 7:] = 100.0
    assert (m(x2, mask=mask)[1, :7] - y[1, :7]).abs().max() == 0
    assert rel_err(y[1:, :7], m(x[1:, :7])) < 1e-12
    with pytest.raises(ValueError):
        m(x, return_state=True)


def test_gradients_reach_every_parameter(grads_reach_all):
    torch.manual_seed(7)
    m = build(activation="full_glu", bidirectional=True).double()
    m(torch.randn(2, 8, DIM, dtype=F64)).square().sum().backward()
    grads_reach_all(m)


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
