"""mix.gated_mlp against its definition and the mixer protocol."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmgraph.blocks.gated_mlp import GATED_MLP
from ssmgraph.registry.specs import ShapeError, TensorType

F64, F32 = torch.float64, torch.float32
C128 = torch.complex128
DIM = 6
VARIANTS = [{}, {"ssm": "s4", "l_max": 8}, {"init": "inv", "disc": "bilinear", "bias": True, "expand": 1}]


def build(**over):
    return GATED_MLP.factory([TensorType(("batch", "seq", DIM))], **{**GATED_MLP.defaults(), "d_state": 8, **over})


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
    assert GATED_MLP.validate() == []
    assert GATED_MLP.role == "mix"
    caps = GATED_MLP.capabilities(GATED_MLP.defaults())
    assert caps.causal and caps.step and not caps.pointwise
    with pytest.raises(ShapeError, match="even"):
        GATED_MLP.shape([TensorType(("b", "l", 8))], **{**GATED_MLP.defaults(), "d_state": 3})


def test_matches_its_definition():
    """y = W_out((SSM(v) + D v) ⊙ silu(g)), (v, g) = W_in x, with the SSM as an explicit convolution."""
    torch.manual_seed(1)
    m = build().double()
    x = torch.randn(2, 9, DIM, dtype=F64)
    v, g = (x @ m.in_proj.weight.T).chunk(2, dim=-1)
    K = m.ssm.kernel(9)[0]  # (E·D, L)
    h = torch.zeros_like(v)
    for t in range(9):
        for s in range(t + 1):
            h[:, t] += K[:, t - s] * v[:, s]
    ref = (h + m.D * v) * F.silu(g) @ m.out_proj.weight.T
    assert rel_err(m(x), ref) < 1e-12
    assert m.in_proj.weight.shape == (2 * 2 * DIM, DIM) and m.in_proj.bias is None


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


def test_causality():
    torch.manual_seed(3)
    m = build().double()
    x = torch.randn(2, 16, DIM, dtype=F64)
    y = m(x)
    for t in (0, 7, 14):
        x2 = x.clone()
        x2[:, t + 1 :] += torch.randn_like(x2[:, t + 1 :])
        assert (m(x2)[:, : t + 1] - y[:, : t + 1]).abs().max() <= 1e-12 * y.abs().max()


@pytest.mark.parametrize("over", [{}, {"ssm": "s4", "l_max": 8}])
def test_chunked_with_carried_state_equals_one_pass(over):
    torch.manual_seed(4)
    m = build(**over).double()
    x = torch.randn(2, 12, DIM, dtype=F64)
    x0 = torch.randn(2, 2 * DIM, 4, dtype=C128)
    y, s = m(x, state=x0, return_state=True)
    y1, s1 = m(x[:, :5], state=x0, return_state=True)
    y2, s2 = m(x[:, 5:], state=s1, return_state=True)
    assert rel_err(torch.cat([y1, y2], 1), y) < 1e-10 and rel_err(s2, s) < 1e-10


def test_mask_gives_the_state_after_the_last_valid_token():
    torch.manual_seed(5)
    m = build().double()
    x = torch.randn(3, 10, DIM, dtype=F64)
    lengths = [10, 6, 1]
    mask = torch.arange(10)[None] < torch.tensor(lengths)[:, None]
    y, s = m(x, return_state=True, mask=mask)
    for b, n in enumerate(lengths):
        yb, sb = m(x[b : b + 1, :n], return_state=True)
        assert rel_err(y[b : b + 1, :n], yb) < 1e-12 and rel_err(s[b : b + 1], sb) < 1e-12


def test_gradients_reach_every_parameter(grads_reach_all):
    torch.manual_seed(7)
    m = build(bias=True).double()
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
