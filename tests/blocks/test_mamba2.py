from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmgraph.blocks import mamba2
from ssmgraph.blocks.optim_hints import OPTIM_ATTR
from ssmgraph.registry.specs import ShapeError, TensorType

SPEC = mamba2.MAMBA2
DM = 8  # d_model of the small test blocks
SMALL = {"headdim": 4, "d_state": 3, "n_groups": 2, "chunk_size": 3, "bias": True}  # E 16, H 4, 2 groups


@pytest.fixture
def block(build):
    """A small fp64 block with every parameter perturbed away from its init (D ≠ 1, norm ≠ 1, biases ≠ 0)."""

    def _block(dtype=torch.float64, **overrides):
        m = build(SPEC, DM, **{**SMALL, **overrides}).to(dtype)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
        return m

    return _block


def upstream_forward(m, x):
    """mamba2.Mamba2.forward written out from upstream (padded conv truncated to L, the recurrence as a plain
    loop over time and heads, ``rms_norm_ref``), sharing no code with the block."""
    length, e, g, n, h, p = x.shape[1], m.d_inner, m.n_groups, m.d_state, m.nheads, m.headdim
    z, xbc, dt = (x @ m.in_proj.weight.T + m.in_proj.bias).split([e, e + 2 * g * n, h], dim=-1)
    conv = F.conv1d(xbc.transpose(1, 2), m.conv1d.weight, m.conv1d.bias, padding=m.d_conv - 1, groups=xbc.shape[-1])
    xs, B, C = F.silu(conv[..., :length]).transpose(1, 2).split([e, g * n, g * n], dim=-1)
    dt = F.softplus(dt + m.dt_bias).clamp(min=m.dt_limit[0], max=m.dt_limit[1])
    A = -torch.exp(m.A_log)
    xs, B, C = xs.unflatten(-1, (h, p)), B.unflatten(-1, (g, n)), C.unflatten(-1, (g, n))
    state = x.new_zeros(x.shape[0], h, p, n)
    ys = []
    for t in range(length):
        y_t = []
        for k in range(h):
            grp = k // (h // g)
            state[:, k] = (
                torch.exp(dt[:, t, k] * A[k])[:, None, None] * state[:, k]
                + (dt[:, t, k, None] * xs[:, t, k])[:, :, None] * B[:, t, grp][:, None, :]
            )
            y_t.append(torch.einsum("bpn,bn->bp", state[:, k], C[:, t, grp]) + m.D[k] * xs[:, t, k])
        ys.append(torch.cat(y_t, -1))
    y = torch.stack(ys, 1)
    if m.norm is not None:  # rms_norm_ref: gate first unless norm_before_gate, RMS over each of G groups
        y = y if m.norm_before_gate else y * F.silu(z)
        yg = y.unflatten(-1, (g, -1))
        y = (yg / torch.sqrt(yg.pow(2).mean(-1, keepdim=True) + m.norm_eps)).flatten(-2) * m.norm.weight
    y = y * F.silu(z) if m.norm is None or m.norm_before_gate else y
    return y @ m.out_proj.weight.T + m.out_proj.bias


def step_loop(m, x, state=None):
    state = m.init_state(x.shape[0], dtype=x.dtype) if state is None else state
    ys = []
    for x_t in x.unbind(1):
        y_t, state = m.step(x_t, state)
        ys.append(y_t)
    return torch.stack(ys, dim=1), state


def random_state(m, batch=2):
    conv, ssm = m.init_state(batch, dtype=torch.float64)
    return torch.randn_like(conv), torch.randn_like(ssm)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


# --- spec -----------------------------------------------------------------------------------


def test_spec_is_well_formed_and_registered():
    assert SPEC.validate() == []
    assert mamba2.ssmgraph_blocks() == [SPEC]
    caps = SPEC.capabilities(SPEC.defaults())
    assert caps.causal and caps.step and not caps.bidirectional and not caps.pointwise


def test_shape_rule(out_type):
    assert out_type(SPEC, 16) == TensorType(("batch", "seq", 16))
    with pytest.raises(ShapeError, match="headdim 32 does not divide the 16 inner channels"):
        out_type(SPEC, DM)
    with pytest.raises(ShapeError, match="n_groups 3 does not divide the 4 heads"):
        out_type(SPEC, DM, headdim=4, n_groups=3)
    with pytest.raises(ShapeError, match="dt_min"):
        out_type(SPEC, DM, headdim=4, dt_min=0.2, dt_max=0.1)
    with pytest.raises(ShapeError, match="dt_limit_max"):
        out_type(SPEC, DM, headdim=4, dt_limit_min=0.1, dt_limit_max=0.05)
    with pytest.raises(ShapeError, match="norm_before_gate"):
        out_type(SPEC, DM, headdim=4, rmsnorm=False, norm_before_gate=True)
    with pytest.raises(ShapeError, match="inner"):
        out_type(SPEC, DM, headdim=4, expand=0.1)


def test_parameters_have_upstream_names_and_shapes(build):
    m = build(SPEC, 32, d_state=16, headdim=16, n_groups=2, d_conv=3)
    e, h, conv = 64, 4, 64 + 2 * 2 * 16
    shapes = {name: tuple(p.shape) for name, p in m.named_parameters()}
    assert shapes == {
        "in_proj.weight": (e + conv + h, 32),
        "conv1d.weight": (conv, 1, 3),
        "conv1d.bias": (conv,),
        "dt_bias": (h,),
        "A_log": (h,),
        "D": (h,),
        "norm.weight": (e,),
        "out_proj.weight": (32, e),
    }
    names = dict(build(SPEC, 32, bias=True, conv_bias=False, rmsnorm=False).named_parameters())
    assert "in_proj.bias" in names and "out_proj.bias" in names and "conv1d.bias" not in names and "norm.weight" not in names


# --- initialisation -------------------------------------------------------------------------


def test_init_facts(build):
    m = build(SPEC, 256, headdim=8)  # 64 heads
    dt = F.softplus(m.dt_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    assert dt.log().std() > 1.0  # spread log-uniformly over two decades
    A = -torch.exp(m.A_log)
    assert A.min() >= -16 and A.max() <= -1 and A.std() > 2  # U[1, 16], not a constant
    assert torch.equal(m.D, torch.ones(64)) and torch.equal(m.norm.weight, torch.ones(512))
    assert m.A_log.dtype == m.D.dtype == m.dt_bias.dtype == torch.float32
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    m.reset_parameters()
    assert torch.equal(m.D, torch.ones(64)) and F.softplus(m.dt_bias).min() >= 1e-3 * (1 - 1e-5)
    assert m.in_proj.weight.abs().sum() > 0


def test_optimizer_marks(build):
    m = build(SPEC, 16, ssm_lr=1e-3)
    for p in (m.A_log, m.D, m.dt_bias):
        assert getattr(p, OPTIM_ATTR) == {"weight_decay": 0.0, "lr": 1e-3} and p._no_weight_decay is True
    assert getattr(build(SPEC, 16).D, OPTIM_ATTR) == {"weight_decay": 0.0}
    assert not hasattr(m.in_proj.weight, OPTIM_ATTR)


# --- forward semantics ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"chunk_size": 64, "n_groups": 1},
        {"norm_before_gate": True, "dt_limit_min": 0.05, "dt_limit_max": 0.3},
        {"rmsnorm": False, "chunk_size": 1},
    ],
)
def test_forward_matches_upstream_written_out(block, overrides):
    m = block(**overrides)
    x = torch.randn(2, 11, DM, dtype=torch.float64)
    assert rel_err(m(x), upstream_forward(m, x)) < 1e-12


@pytest.mark.parametrize("chunk", [1, 3, 4, 9, 32])
def test_forward_equals_step_loop_values_and_grads(block, chunk):
    m = block(chunk_size=chunk)
    x = torch.randn(2, 9, DM, dtype=torch.float64, requires_grad=True)
    h0 = random_state(m)
    params = [x, *m.parameters()]
    w = torch.randn(2, 9, DM, dtype=torch.float64)

    y, (conv_f, ssm_f) = m(x, state=h0, return_state=True)
    g_fwd = torch.autograd.grad((y * w).sum() + ssm_f.sum() + conv_f.sum(), params)
    y_s, (conv_s, ssm_s) = step_loop(m, x, h0)
    g_step = torch.autograd.grad((y_s * w).sum() + ssm_s.sum() + conv_s.sum(), params)

    assert rel_err(y, y_s) < 1e-10
    assert rel_err(ssm_f, ssm_s) < 1e-10 and rel_err(conv_f, conv_s) < 1e-12
    names = ["x"] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, g_fwd, g_step):
        assert rel_err(a, b) < 1e-9, name


@pytest.mark.parametrize("cuts", [(1,), (2, 3), (5,), (3, 4, 9)])
def test_chunked_with_carried_state_equals_one_pass(block, cuts):
    m = block()
    x = torch.randn(2, 12, DM, dtype=torch.float64)
    y, (conv, ssm) = m(x, return_state=True)
    state, ys, start = None, [], 0
    for end in (*cuts, 12):
        y_c, state = m(x[:, start:end], state=state, return_state=True)
        ys.append(y_c)
        start = end
    assert rel_err(torch.cat(ys, dim=1), y) < 1e-12
    assert rel_err(state[0], conv) < 1e-12 and rel_err(state[1], ssm) < 1e-12


def test_causal(block):
    m = block(dtype=torch.float32)
    x = torch.randn(2, 12, DM)
    y = m(x)
    for t in (0, 5, 10):
        x2 = x.clone()
        x2[:, t + 1 :] += torch.randn_like(x2[:, t + 1 :])
        y2 = m(x2)
        assert torch.equal(y2[:, : t + 1], y[:, : t + 1])
        assert not torch.allclose(y2[:, t + 1], y[:, t + 1])


def test_mask_gives_state_after_last_valid_token(block):
    m = block()
    lengths = [9, 4, 1, 0]
    x = torch.randn(4, 9, DM, dtype=torch.float64)
    mask = torch.arange(9)[None, :] < torch.tensor(lengths)[:, None]
    h0 = random_state(m, 4)
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
    m = build(SPEC, DM, headdim=4, d_state=5, d_conv=3)
    conv, ssm = m.init_state(3, dtype=torch.bfloat16)
    assert conv.shape == (3, 16 + 10, 3) and conv.dtype == torch.bfloat16
    assert ssm.shape == (3, 4, 4, 5) and ssm.dtype == torch.float32
    y, (conv2, ssm2) = m.step(torch.randn(3, DM), m.init_state(3))
    assert y.shape == (3, DM) and conv2.shape == conv.shape and ssm2.shape == ssm.shape


def test_autocast_bf16_keeps_ssm_in_fp32(build):
    m = build(SPEC, DM, headdim=4)
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
    assert m.A_log.grad.dtype == torch.float32 and torch.isfinite(m.A_log.grad).all()


@pytest.mark.parametrize("overrides", [{}, {**SMALL, "norm_before_gate": True}, {"headdim": 4, "rmsnorm": False}])
def test_gradients_reach_every_parameter(build, grads_reach_all, overrides):
    m = build(SPEC, 16, **overrides)
    x = torch.randn(2, 7, 16)
    (m(x) * torch.randn(2, 7, 16)).sum().backward()
    grads_reach_all(m)


# --- transformers' Mamba2Mixer, an independent implementation -----------------------------------


@pytest.mark.parametrize(("groups", "length"), [(1, 11), (2, 5)])
def test_equals_transformers_mamba2_mixer(build, groups, length):
    transformers = pytest.importorskip("transformers")
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    config = transformers.Mamba2Config(
        hidden_size=16, num_heads=8, head_dim=4, state_size=6, n_groups=groups, chunk_size=4, conv_kernel=3, use_bias=True
    )
    theirs = Mamba2Mixer(config, layer_idx=0).eval()
    ours = build(SPEC, 16, headdim=4, d_state=6, n_groups=groups, chunk_size=7, d_conv=3, bias=True, norm_eps=1e-5)
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, length, 16)
    with torch.no_grad():
        assert rel_err(ours(x), theirs(x)) < 1e-5
