"""``mix.gla``, ``mix.deltanet``, ``mix.gated_deltanet`` against loops of the papers' equations.

Each reference recomputes a block from its weights, sharing no code with ssmgraph: the
projections, a left-padded causal conv1d, the activations, the recurrence one position at a
time in the papers' own convention, the per-head RMS norm and gate, and o_proj.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssmgraph.blocks import deltanet, gated_deltanet, gla
from ssmgraph.registry.specs import ShapeError

DM = 12
F64 = torch.float64


def conv(m, name, t):
    """fla's ShortConvolution without a cache: conv1d padded K-1 on the left (no activation)."""
    c = getattr(m, name)
    y = F.conv1d(F.pad(t.transpose(1, 2), (c.kernel_size[0] - 1, 0)), c.weight, c.bias, groups=c.groups)
    return y.transpose(1, 2)


def heads(t, h):
    return t.reshape(*t.shape[:2], h, -1)


def finish(m, x, o):
    """Per-head RMS norm · weight (· silu(g)), then o_proj: o is (B, L, H, d_v)."""
    y = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + m.o_norm.eps) * m.o_norm.weight
    if m.output_gate:
        y = y * F.silu(heads(x @ m.g_proj.weight.T, m.heads))
    return y.flatten(2) @ m.o_proj.weight.T


def gla_reference(m, x):
    q, k, v = (x @ getattr(m, f"{n}_proj").weight.T for n in "qkv")
    if m.short_conv:
        q, k, v = (F.silu(conv(m, f"{n}_conv1d", t)) for n, t in zip("qkv", (q, k, v)))
    gk = (x @ m.gk_proj[0].weight.T) @ m.gk_proj[1].weight.T + m.gk_proj[1].bias
    log_a = F.logsigmoid(gk) / m.gate_logit_normalizer
    if m.clamp_min is not None:
        log_a = log_a.clamp_min(m.clamp_min)
    q, k, v, log_a = (heads(t, m.heads) for t in (q, k, v, log_a))
    s = torch.zeros(x.shape[0], m.heads, q.shape[-1], v.shape[-1], dtype=x.dtype)
    outs = []
    for t in range(x.shape[1]):  # S_t = diag(α_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t / sqrt(d_k)
        s = torch.exp(log_a[:, t]).unsqueeze(-1) * s + k[:, t].unsqueeze(-1) * v[:, t].unsqueeze(-2)
        outs.append((q[:, t].unsqueeze(-2) @ s).squeeze(-2) / math.sqrt(q.shape[-1]))
    return finish(m, x, torch.stack(outs, 1))


def delta_reference(m, x):
    q, k, v = (x @ getattr(m, f"{n}_proj").weight.T for n in "qkv")
    if m.short_conv:
        q, k, v = (conv(m, f"{n}_conv1d", t) for n, t in zip("qkv", (q, k, v)))
    phi = {"silu": F.silu, "relu": F.relu, "elu": lambda t: F.elu(t) + 1, "identity": lambda t: t}[m.qk_activation]
    q, k, v = heads(phi(q), m.heads), heads(phi(k), m.heads), heads(F.silu(v), m.heads)
    q, k = (t / torch.sqrt(t.pow(2).sum(-1, keepdim=True) + 1e-6) for t in (q, k))
    beta = torch.sigmoid(x @ m.b_proj.weight.T) * (2 if m.allow_neg_eigval else 1)
    if isinstance(m, gated_deltanet.GatedDeltaNet):
        alpha = torch.exp(-torch.exp(m.A_log) * F.softplus(x @ m.a_proj.weight.T + m.dt_bias))
    else:
        alpha = torch.ones_like(beta)
    s = torch.zeros(x.shape[0], m.heads, v.shape[-1], k.shape[-1], dtype=x.dtype)  # V×K, the papers' layout
    eye = torch.eye(k.shape[-1], dtype=x.dtype)
    outs = []
    for t in range(x.shape[1]):  # S_t = S_{t-1} (α_t (I − β_t k_t k_t^T)) + β_t v_t k_t^T, o_t = S_t q_t / sqrt(d_k)
        kt, b, a = k[:, t], beta[:, t, :, None, None], alpha[:, t, :, None, None]
        s = s @ (a * (eye - b * kt.unsqueeze(-1) * kt.unsqueeze(-2))) + b * v[:, t].unsqueeze(-1) * kt.unsqueeze(-2)
        outs.append((s @ q[:, t].unsqueeze(-1)).squeeze(-1) / math.sqrt(k.shape[-1]))
    return finish(m, x, torch.stack(outs, 1))


CASES = {
    "gla": (gla.GLA, gla_reference, {"heads": 2, "gate_logit_normalizer": 4.0}),
    "gla_conv": (gla.GLA, gla_reference, {"heads": 3, "short_conv": True, "conv_bias": True, "clamp_min": -0.2}),
    "gla_no_gate": (gla.GLA, gla_reference, {"output_gate": False, "expand_k": 1}),
    "deltanet": (deltanet.DELTANET, delta_reference, {"heads": 2}),
    "deltanet_variants": (
        deltanet.DELTANET,
        delta_reference,
        {"heads": 3, "short_conv": False, "qk_activation": "elu", "output_gate": True, "allow_neg_eigval": True},
    ),
    "deltanet_relu": (deltanet.DELTANET, delta_reference, {"qk_activation": "relu", "conv_bias": True, "expand_v": 2}),
    "gated_deltanet": (gated_deltanet.GATED_DELTANET, delta_reference, {"heads": 2}),
    "gated_deltanet_variants": (
        gated_deltanet.GATED_DELTANET,
        delta_reference,
        {"heads": 3, "head_dim": 5, "expand_v": 1, "short_conv": False, "output_gate": False, "allow_neg_eigval": True},
    ),
}


@pytest.fixture
def block(build):
    def _block(name, **overrides):
        spec, ref, args = CASES[name]
        m = build(spec, DM, **{**args, **overrides}).to(F64)
        with torch.no_grad():  # away from the init: biases, norm weights and gates all matter
            for p in m.parameters():
                p.add_(0.2 * torch.randn_like(p))
        return m, ref

    return _block


def run_steps(m, x, state=None):
    state = m.init_state(x.shape[0], dtype=x.dtype) if state is None else state
    ys = []
    for x_t in x.unbind(1):
        y_t, state = m.step(x_t, state)
        ys.append(y_t)
    return torch.stack(ys, 1), state


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize(("length", "chunk"), [(1, 64), (13, 4), (29, 8)])
def test_forward_and_step_equal_the_papers_loop(block, name, length, chunk):
    m, ref = block(name, chunk_size=chunk)
    x = torch.randn(2, length, DM, dtype=F64)
    want = ref(m, x)
    assert rel_err(m(x), want) < 1e-12
    assert rel_err(run_steps(m, x)[0], want) < 1e-12


@pytest.mark.parametrize("name", CASES)
def test_initial_and_final_state_carry_over_chunks(block, name):
    m, _ = block(name, chunk_size=4)
    x = torch.randn(2, 23, DM, dtype=F64)
    y, state = m(x, return_state=True)
    y1, s1 = m(x[:, :10], return_state=True)
    y2, s2 = m(x[:, 10:], state=s1, return_state=True)
    assert rel_err(torch.cat([y1, y2], 1), y) < 1e-12
    y3, s3 = run_steps(m, x[:, 10:], s1)
    assert rel_err(y3, y[:, 10:]) < 1e-12
    for a, b, c in zip(s2[0] + (s2[1],), state[0] + (state[1],), s3[0] + (s3[1],)):
        assert rel_err(a, b) < 1e-12 and rel_err(c, b) < 1e-12


@pytest.mark.parametrize("name", CASES)
def test_padding_mask(block, name):
    m, _ = block(name, chunk_size=4)
    x = torch.randn(3, 11, DM, dtype=F64)
    lengths = [11, 6, 1]
    mask = torch.arange(11)[None] < torch.tensor(lengths)[:, None]
    y, state = m(x, mask=mask, return_state=True)
    assert not y[~mask].any()
    z = torch.randn(3, DM, dtype=F64)
    z_next, _ = m.step(z, state)
    for b, n in enumerate(lengths):
        yb, sb = m(x[b : b + 1, :n], return_state=True)
        assert rel_err(y[b : b + 1, :n], yb) < 1e-12
        assert rel_err(z_next[b : b + 1], m.step(z[b : b + 1], sb)[0]) < 1e-12


@pytest.mark.parametrize("name", ["gla", "deltanet", "gated_deltanet"])
def test_fp32_matches_fp64(block, name):
    m, _ = block(name)
    x = torch.randn(2, 150, DM, dtype=F64)
    want = m(x)
    assert rel_err(m.float()(x.float()).double(), want) < 1e-4


def test_shape_rules(out_type):
    with pytest.raises(ShapeError, match="does not split into 5 heads"):
        out_type(gla.GLA, DM, heads=5)
    with pytest.raises(ShapeError, match="value width 12 does not split into 8 heads"):
        out_type(deltanet.DELTANET, DM, heads=8, expand_k=2.0)
    with pytest.raises(ShapeError, match="smaller than heads"):
        out_type(gated_deltanet.GATED_DELTANET, 2, heads=4)
    with pytest.raises(ShapeError, match="gate_logit_normalizer"):
        out_type(gla.GLA, DM, heads=2, gate_logit_normalizer=0.0)
    assert out_type(gated_deltanet.GATED_DELTANET, 2, heads=4, head_dim=3).dim == 2


def test_gated_deltanet_init_follows_fla(build):
    m = build(gated_deltanet.GATED_DELTANET, 64, heads=64, head_dim=2)
    a = torch.exp(m.A_log)
    dt = F.softplus(m.dt_bias)
    assert ((a > 0) & (a <= 16)).all() and a.max() > 8 and a.dtype == torch.float32
    assert ((dt >= 1e-3 * 0.999) & (dt <= 0.1 * 1.001)).all()
    assert m.A_log._optim == {"weight_decay": 0.0} and m.dt_bias._no_weight_decay
    widths = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert widths["q_proj.weight"] == (128, 64) and widths["v_proj.weight"] == (256, 64) and widths["o_norm.weight"] == (4,)


def test_specs_are_registered():
    for module, spec in ((gla, gla.GLA), (deltanet, deltanet.DELTANET), (gated_deltanet, gated_deltanet.GATED_DELTANET)):
        assert spec.validate() == [] and module.ssmgraph_blocks() == [spec]
        caps = spec.capabilities(spec.defaults())
        assert caps.causal and caps.step and not caps.bidirectional and not caps.pointwise
