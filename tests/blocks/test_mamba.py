from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssmgraph.blocks import mamba
from ssmgraph.blocks.optim_hints import OPTIM_ATTR
from ssmgraph.ops.selective_scan import selective_scan_ref
from ssmgraph.registry.specs import ShapeError, TensorType

SPEC = mamba.MAMBA
DM = 8  # d_model of the small test blocks
SCANS = ("loop", "blelloch")


@pytest.fixture
def block(build):
    """A small fp64 block with every parameter perturbed away from its init (D ≠ 1, biases ≠ 0)."""

    def _block(dtype=torch.float64, **overrides):
        m = build(SPEC, DM, **{"d_state": 4, "bias": True, **overrides}).to(dtype)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
        return m

    return _block


def upstream_forward(m, x):
    """mamba_simple.Mamba.forward, slow path: padded conv truncated to L, then selective_scan_ref."""
    length = x.shape[1]
    xz = (x @ m.in_proj.weight.T + m.in_proj.bias).transpose(1, 2)
    xi, z = xz.chunk(2, dim=1)
    conv = F.conv1d(xi, m.conv1d.weight, m.conv1d.bias, padding=m.d_conv - 1, groups=m.d_inner)[..., :length]
    xi = F.silu(conv)
    dt, B, C = (xi.transpose(1, 2) @ m.x_proj.weight.T).split([m.dt_rank, m.d_state, m.d_state], dim=-1)
    dt = (dt @ m.dt_proj.weight.T).transpose(1, 2)
    y = selective_scan_ref(
        xi,
        dt,
        -torch.exp(m.A_log),
        B.transpose(1, 2),
        C.transpose(1, 2),
        m.D,
        z=z,
        delta_bias=m.dt_proj.bias,
        delta_softplus=True,
    )
    return y.transpose(1, 2) @ m.out_proj.weight.T + m.out_proj.bias


def step_loop(m, x, state=None):
    state = m.init_state(x.shape[0], dtype=x.dtype) if state is None else state
    ys = []
    for x_t in x.unbind(1):
        y_t, state = m.step(x_t, state)
        ys.append(y_t)
    return torch.stack(ys, dim=1), state


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


# --- spec -----------------------------------------------------------------------------------


def test_spec_is_well_formed_and_registered():
    assert SPEC.validate() == []
    assert mamba.ssmgraph_blocks() == [SPEC]
    caps = SPEC.capabilities(SPEC.defaults())
    assert caps.causal and caps.step and not caps.bidirectional and not caps.pointwise


def test_shape_rule(out_type):
    assert out_type(SPEC, DM) == TensorType(("batch", "seq", DM))
    with pytest.raises(ShapeError, match="dt_rank"):
        out_type(SPEC, DM, dt_rank="big")
    with pytest.raises(ShapeError, match="dt_rank"):
        out_type(SPEC, DM, dt_rank=0)
    with pytest.raises(ShapeError, match="dt_min"):
        out_type(SPEC, DM, dt_min=0.2, dt_max=0.1)
    with pytest.raises(ShapeError, match="dt_min"):
        out_type(SPEC, DM, dt_min=0.0)
    with pytest.raises(ShapeError, match="inner"):
        out_type(SPEC, DM, expand=0.1)
    with pytest.raises(ShapeError):
        out_type(SPEC, TensorType(("batch", "seq"), "int"))


def test_parameters_have_upstream_names_and_shapes(build):
    m = build(SPEC, 40, d_state=16, dt_rank="auto")
    e, r = 80, math.ceil(40 / 16)
    shapes = {name: tuple(p.shape) for name, p in m.named_parameters()}
    assert shapes == {
        "in_proj.weight": (2 * e, 40),
        "conv1d.weight": (e, 1, 4),
        "conv1d.bias": (e,),
        "x_proj.weight": (r + 32, e),
        "dt_proj.weight": (e, r),
        "dt_proj.bias": (e,),
        "A_log": (e, 16),
        "D": (e,),
        "out_proj.weight": (40, e),
    }
    m = build(SPEC, 40, bias=True, conv_bias=False, dt_rank=5, expand=1.5)
    names = dict(m.named_parameters())
    assert "in_proj.bias" in names and "out_proj.bias" in names and "conv1d.bias" not in names
    assert names["dt_proj.weight"].shape == (60, 5)


# --- initialisation -------------------------------------------------------------------------


def test_init_facts(build):
    m = build(SPEC, 64, d_state=16)
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    assert dt.log().std() > 1.0  # spread log-uniformly over two decades, not a constant
    expected_A = -torch.arange(1, 17, dtype=torch.float32).expand(m.d_inner, -1)
    torch.testing.assert_close(-torch.exp(m.A_log), expected_A)
    assert torch.equal(m.D, torch.ones(m.d_inner))
    bound = m.dt_rank**-0.5
    assert m.dt_proj.weight.abs().max() <= bound and m.dt_proj.weight.abs().max() > 0.5 * bound
    assert m.A_log.dtype == m.D.dtype == torch.float32


def test_dt_init_options(build):
    m = build(SPEC, 16, dt_init="constant", dt_scale=2.0, dt_rank=4, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-3)
    assert torch.all(m.dt_proj.weight == 2.0 / 2)  # dt_scale / sqrt(R)
    torch.testing.assert_close(F.softplus(m.dt_proj.bias), torch.full((32,), 1e-3))  # the floor wins


def test_optimizer_marks_and_reinit_flag(build):
    m = build(SPEC, 16, ssm_lr=1e-3)
    assert getattr(m.A_log, OPTIM_ATTR) == {"weight_decay": 0.0, "lr": 1e-3}
    assert getattr(m.D, OPTIM_ATTR) == {"weight_decay": 0.0, "lr": 1e-3}
    assert getattr(build(SPEC, 16).D, OPTIM_ATTR) == {"weight_decay": 0.0}
    assert not hasattr(m.dt_proj.weight, OPTIM_ATTR)
    assert m.dt_proj.bias._no_reinit is True
    # a generic init pass that zeroes biases but honours the flag keeps the dt bias
    bias = m.dt_proj.bias.detach().clone()
    for mod in m.modules():
        b = getattr(mod, "bias", None)
        if isinstance(b, torch.nn.Parameter) and not getattr(b, "_no_reinit", False):
            torch.nn.init.zeros_(b)
    assert torch.equal(m.dt_proj.bias, bias)
    # reset_parameters redraws the reference init after a pass that ignored the flag
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    m.reset_parameters()
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    assert torch.equal(m.D, torch.ones(32)) and m.in_proj.weight.abs().sum() > 0


# --- forward semantics ----------------------------------------------------------------------


@pytest.mark.parametrize("scan", SCANS)
def test_forward_matches_upstream_slow_path(block, scan):
    m = block(scan=scan)
    x = torch.randn(2, 11, DM, dtype=torch.float64)
    assert rel_err(m(x), upstream_forward(m, x)) < 1e-12


@pytest.mark.parametrize("scan", SCANS)
def test_forward_equals_step_loop_values_and_grads(block, scan):
    m = block(scan=scan)
    x = torch.randn(2, 9, DM, dtype=torch.float64, requires_grad=True)
    h0 = (torch.randn(2, m.d_inner, m.d_conv, dtype=torch.float64), torch.randn(2, m.d_inner, m.d_state, dtype=torch.float64))
    params = [x, *m.parameters()]
    w = torch.randn(2, 9, DM, dtype=torch.float64)

    y, (conv_f, ssm_f) = m(x, state=h0, return_state=True)
    g_fwd = torch.autograd.grad((y * w).sum() + ssm_f.sum() + conv_f.sum(), params)
    y_s, (conv_s, ssm_s) = step_loop(m, x, h0)
    g_step = torch.autograd.grad((y_s * w).sum() + ssm_s.sum() + conv_s.sum(), params)

    assert rel_err(y, y_s) < 1e-8
    assert rel_err(ssm_f, ssm_s) < 1e-8 and rel_err(conv_f, conv_s) < 1e-12
    names = ["x"] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, g_fwd, g_step):
        assert rel_err(a, b) < 1e-8, name


@pytest.mark.parametrize("scan", SCANS)
def test_causal(block, scan):
    m = block(dtype=torch.float32, scan=scan)
    x = torch.randn(2, 12, DM)
    y = m(x)
    for t in (0, 5, 10):
        x2 = x.clone()
        x2[:, t + 1 :] += torch.randn_like(x2[:, t + 1 :])
        y2 = m(x2)
        assert torch.equal(y2[:, : t + 1], y[:, : t + 1])
        assert not torch.allclose(y2[:, t + 1], y[:, t + 1])


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("cuts", [(1,), (2, 3), (5,), (3, 4, 9)])
def test_chunked_with_carried_state_equals_one_pass(block, scan, cuts):
    m = block(scan=scan)
    x = torch.randn(2, 12, DM, dtype=torch.float64)
    y, (conv, ssm) = m(x, return_state=True)
    state, ys, start = None, [], 0
    for end in (*cuts, 12):
        y_c, state = m(x[:, start:end], state=state, return_state=True)
        ys.append(y_c)
        start = end
    assert rel_err(torch.cat(ys, dim=1), y) < 1e-12
    assert rel_err(state[0], conv) < 1e-12 and rel_err(state[1], ssm) < 1e-12


def test_mask_gives_state_after_last_valid_token(block):
    m = block()
    lengths = [9, 4, 1, 0]
    x = torch.randn(4, 9, DM, dtype=torch.float64)
    mask = torch.arange(9)[None, :] < torch.tensor(lengths)[:, None]
    h0 = (torch.randn(4, m.d_inner, m.d_conv, dtype=torch.float64), torch.randn(4, m.d_inner, m.d_state, dtype=torch.float64))
    y, (conv, ssm) = m(x, state=h0, return_state=True, mask=mask)
    for i, n in enumerate(lengths):
        assert torch.equal(y[i, n:], torch.zeros_like(y[i, n:]))
        if n == 0:  # an empty sequence keeps its initial state
            assert torch.equal(conv[i], h0[0][i]) and torch.equal(ssm[i], h0[1][i])
            continue
        y_i, (conv_i, ssm_i) = m(x[i : i + 1, :n], state=(h0[0][i : i + 1], h0[1][i : i + 1]), return_state=True)
        assert rel_err(y[i, :n], y_i[0]) < 1e-12
        assert rel_err(conv[i], conv_i[0]) < 1e-12 and rel_err(ssm[i], ssm_i[0]) < 1e-12


def test_init_state_and_step_shapes(build):
    m = build(SPEC, DM, d_state=5, d_conv=3)
    conv, ssm = m.init_state(3, dtype=torch.bfloat16)
    assert conv.shape == (3, 16, 3) and conv.dtype == torch.bfloat16
    assert ssm.shape == (3, 16, 5) and ssm.dtype == torch.float32
    y, (conv2, ssm2) = m.step(torch.randn(3, DM), m.init_state(3))
    assert y.shape == (3, DM) and conv2.shape == (3, 16, 3) and ssm2.shape == (3, 16, 5)


def test_autocast_bf16_keeps_ssm_in_fp32(build):
    m = build(SPEC, DM)
    x = torch.randn(2, 10, DM)
    y32, (_, ssm32) = m(x, return_state=True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        y, (_conv, ssm) = m(x, return_state=True)
        y_t, (_, ssm_t) = m.step(x[:, 0], m.init_state(2))
    assert y.dtype == torch.bfloat16 and y_t.dtype == torch.bfloat16
    assert ssm.dtype == ssm_t.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert rel_err(y.float(), y32) < 0.05 and rel_err(ssm, ssm32) < 0.05
    y.float().sum().backward()
    assert m.A_log.grad.dtype == m.D.grad.dtype == torch.float32 and torch.isfinite(m.A_log.grad).all()


@pytest.mark.parametrize("overrides", [{}, {"bias": True, "dt_rank": 3, "d_conv": 2}])
def test_gradients_reach_every_parameter(build, grads_reach_all, overrides):
    m = build(SPEC, DM, **overrides)
    x = torch.randn(2, 7, DM)
    (m(x) * torch.randn(2, 7, DM)).sum().backward()
    grads_reach_all(m)
