"""mix.s4d against independent references and the mixer protocol."""

from __future__ import annotations

import math

import pytest
import torch

from ssmgraph.blocks.s4d import S4D
from ssmgraph.registry.specs import ShapeError, TensorType

F64, F32 = torch.float64, torch.float32
DIM = 6
VARIANTS = [
    {},
    {"init": "legs", "disc": "bilinear", "channels": 2},
    {"init": "inv", "glu": False, "activation": "silu"},
    {"init": "real"},
]


def build(**over):
    return S4D.factory([TensorType(("batch", "seq", DIM))], **{**S4D.defaults(), "d_state": 8, **over})


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
    assert S4D.validate() == []
    assert S4D.capabilities(S4D.defaults()).causal and S4D.capabilities(S4D.defaults()).step
    bi = S4D.capabilities({**S4D.defaults(), "bidirectional": True})
    assert bi.bidirectional and not bi.causal and not bi.step


def test_shape_rule():
    args = S4D.defaults()
    assert S4D.shape([TensorType(("b", "l", 32))], **args) == TensorType(("b", "l", 32))
    with pytest.raises(ShapeError, match="even"):
        S4D.shape([TensorType(("b", "l", 32))], **{**args, "d_state": 7})
    with pytest.raises(ShapeError):
        S4D.shape([TensorType(("b", "l"), "int")], **args)
    with pytest.raises(ShapeError, match="dt_min must be positive"):  # log-uniform Δ: log(0) at build time before
        S4D.shape([TensorType(("b", "l", 32))], **{**args, "dt_min": 0.0})


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
    g_conv = torch.autograd.grad((y * w).sum(), params)
    g_step = torch.autograd.grad((ys * w).sum(), params)
    for a, b in zip(g_conv, g_step):
        assert rel_err(a, b) < tol


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_kernel_equals_explicit_sum(disc):
    torch.manual_seed(1)
    ssm = build(disc=disc, init="legs").double().ssm
    L = 20
    dt = torch.exp(ssm.log_dt)[:, None]
    A = -torch.exp(ssm.log_A_real) - 1j * ssm.A_imag
    B, C = torch.view_as_complex(ssm.B), torch.view_as_complex(ssm.C)
    if disc == "zoh":
        dA, dB = torch.exp(dt * A), (torch.exp(dt * A) - 1) / A * B
    else:
        dA, dB = (1 + dt * A / 2) / (1 - dt * A / 2), dt / (1 - dt * A / 2) * B
    ref, power = [], torch.ones_like(dA)
    for _ in range(L):  # K_l = 2 Re Σ_n C_n Ā_n^l B̄_n, powers by repeated multiplication
        ref.append(2 * (C * power * dB).sum(-1).real)
        power = power * dA
    assert rel_err(ssm.kernel(L), torch.stack(ref, -1)) < 1e-10


def test_bidirectional_convolution_convention():
    torch.manual_seed(2)
    ssm = build(bidirectional=True, channels=2).double().ssm
    L = 9
    u = torch.randn(2, DIM, L, dtype=F64)
    k = ssm.kernel(L)  # (2c, H, L): causal channels first, then the anti-causal ones
    y, _ = ssm(u)
    ref = torch.zeros(2, 2, DIM, L, dtype=F64)
    for t in range(L):
        for s in range(L):
            if s <= t:
                ref[..., t] += k[:2, :, t - s] * u[:, None, :, s]
            else:
                ref[..., t] += k[2:, :, s - t - 1] * u[:, None, :, s]
    assert rel_err(y, ref) < 1e-12


def test_causality():
    torch.manual_seed(3)
    m = build().double()
    x = torch.randn(2, 16, DIM, dtype=F64)
    y = m(x)
    for t in (0, 7, 14):
        x2 = x.clone()
        x2[:, t + 1 :] += torch.randn_like(x2[:, t + 1 :])
        y2 = m(x2)
        assert (y2[:, : t + 1] - y[:, : t + 1]).abs().max() <= 1e-12 * y.abs().max()
        assert (y2[:, t + 1 :] - y[:, t + 1 :]).abs().max() > 1e-3
    bi = build(bidirectional=True).double()
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert (bi(x2)[:, 0] - bi(x)[:, 0]).abs().max() > 1e-6  # non-causal by design


@pytest.mark.parametrize("split", [1, 5, 11])
def test_chunked_with_carried_state_equals_one_pass(split):
    torch.manual_seed(4)
    m = build(init="legs", channels=2).double()
    x = torch.randn(2, 12, DIM, dtype=F64)
    x0 = m.init_state(2, dtype=F64) + torch.randn(2, DIM, 4, dtype=torch.complex128)
    y, s = m(x, state=x0, return_state=True)
    y1, s1 = m(x[:, :split], state=x0, return_state=True)
    y2, s2 = m(x[:, split:], state=s1, return_state=True)
    assert rel_err(torch.cat([y1, y2], 1), y) < 1e-10 and rel_err(s2, s) < 1e-10
    ys, ss = step_loop(m, x, x0)
    assert rel_err(ys, y) < 1e-10 and rel_err(ss, s) < 1e-10


def test_mask_gives_the_state_after_the_last_valid_token():
    torch.manual_seed(5)
    m = build().double()
    x = torch.randn(3, 10, DIM, dtype=F64)
    lengths = [10, 6, 1]
    mask = torch.arange(10)[None] < torch.tensor(lengths)[:, None]
    x0 = torch.randn(3, DIM, 4, dtype=torch.complex128)
    y, s = m(x, state=x0, return_state=True, mask=mask)
    for b, n in enumerate(lengths):
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
    m = build(init="legs", channels=2).double()
    x = torch.randn(2, 8, DIM, dtype=F64)
    y, _ = m(x, state=torch.randn(2, DIM, 4, dtype=torch.complex128), return_state=True)
    y.square().sum().backward()
    grads_reach_all(m)


def test_init_and_optimizer_hints():
    m = build(d_state=16, dt_min=1e-3, dt_max=1e-1, ssm_lr=5e-4)
    ssm = m.ssm
    assert torch.allclose(-torch.exp(ssm.log_A_real), torch.full_like(ssm.log_A_real, -0.5))
    assert torch.allclose(ssm.A_imag, math.pi * torch.arange(8.0).expand(DIM, -1))
    dt = torch.exp(ssm.log_dt)
    assert (dt >= 1e-3 * (1 - 1e-6)).all() and (dt <= 1e-1 * (1 + 1e-6)).all()
    for name in ("log_dt", "log_A_real", "A_imag", "B"):
        assert getattr(ssm, name)._optim == {"lr": 5e-4, "weight_decay": 0.0}
    assert not hasattr(ssm.C, "_optim") and not hasattr(m.D, "_optim")
    frozen = build(ssm_lr=0.0)
    names = {n for n, _ in frozen.named_parameters()}
    assert "ssm.log_dt" not in names and "ssm.C" in names
    assert {n for n, _ in frozen.named_buffers()} == {"ssm.log_dt", "ssm.log_A_real", "ssm.A_imag", "ssm.B"}


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
