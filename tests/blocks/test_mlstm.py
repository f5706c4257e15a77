"""mix.mlstm against the official xlstm layer written out with its parallel (quadratic) cell."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssmgraph.blocks.mlstm import MLSTM, inner_width
from ssmgraph.registry.specs import ShapeError, TensorType

F64 = torch.float64
DIM = 8


def build(**over):
    m = MLSTM.factory([TensorType(("batch", "seq", DIM))], **{**MLSTM.defaults(), **over}).double()
    with torch.no_grad():  # data-dependent gates and a non-trivial norm instead of the zero init
        for gate in (m.igate, m.fgate):
            gate.weight.normal_(0, 0.3)
        m.outnorm.weight.normal_(0, 0.2)
        m.learnable_skip.normal_(1, 0.2)
    return m


def parallel_stabilized_simple(q, k, v, i_pre, f_pre, eps):
    """xlstm/blocks/mlstm/backends.py ``parallel_stabilized_simple``: (B, H, S, d), gates (B, H, S, 1)."""
    B, H, S, d = q.shape
    ltr = torch.tril(torch.ones(S, S, dtype=torch.bool))
    log_f = F.logsigmoid(f_pre)
    cum = torch.cat([torch.zeros(B, H, 1, 1, dtype=q.dtype), torch.cumsum(log_f, dim=-2)], dim=-2)
    rep = cum.repeat(1, 1, 1, S + 1)
    log_fg = torch.where(ltr, (rep - rep.transpose(-2, -1))[:, :, 1:, 1:], -float("inf"))
    log_D = log_fg + i_pre.transpose(-2, -1)
    max_log_D = log_D.max(dim=-1, keepdim=True).values
    C = (q @ (k / math.sqrt(d)).transpose(-2, -1)) * torch.exp(log_D - max_log_D)
    normalizer = torch.maximum(C.sum(dim=-1, keepdim=True).abs(), torch.exp(-max_log_D))
    return (C / (normalizer + eps)) @ v


def official_layer(m, x):
    """xlstm/blocks/mlstm/layer.py ``mLSTMLayer.forward`` and cell.py ``mLSTMCell.forward``."""
    B, S, _ = x.shape
    E, H, K = m.inner, m.heads, m.conv_kernel
    x_mlstm, z = m.proj_up(x).split(E, dim=-1)
    conv = F.conv1d(x_mlstm.transpose(1, 2), m.conv1d.weight, m.conv1d.bias, padding=K - 1, groups=E)[..., :S]
    act = F.silu(conv.transpose(1, 2))

    def headwise(proj, t):
        w = proj.weight  # (blocks, out, in)
        y = torch.einsum("bsni,noi->bsno", t.reshape(B, S, w.shape[0], -1), w).reshape(B, S, -1)
        return y if proj.bias is None else y + proj.bias

    q, k, v = headwise(m.q_proj, act), headwise(m.k_proj, act), headwise(m.v_proj, x_mlstm)
    gate_in = torch.cat([q, k, v], dim=-1)
    i_pre = m.igate(gate_in).transpose(1, 2).unsqueeze(-1)
    f_pre = m.fgate(gate_in).transpose(1, 2).unsqueeze(-1)
    heads = (t.view(B, S, H, -1).transpose(1, 2) for t in (q, k, v))
    h = parallel_stabilized_simple(*heads, i_pre, f_pre, eps=0.0)  # (B, H, S, d)
    gn = F.group_norm(h.transpose(1, 2).reshape(B * S, E), H, 1 + m.outnorm.weight, None, 1e-5).view(B, S, E)
    return m.proj_down((gn + m.learnable_skip * act) * F.silu(z))


@pytest.mark.parametrize("over", [{}, {"heads": 2, "chunk": 3, "bias": True}, {"heads": 1, "chunk": 5, "conv_kernel": 2}])
def test_forward_and_step_equal_the_official_layer(over):
    torch.manual_seed(0)
    m = build(eps=0.0, **over)
    x = torch.randn(2, 11, DIM, dtype=F64)
    ref = official_layer(m, x)
    y = m(x)
    assert ((y - ref).abs().max() / ref.abs().max()).item() < 1e-11
    state = m.init_state(2, dtype=F64)
    ys = []
    for t in range(x.shape[1]):
        y_t, state = m.step(x[:, t], state)
        ys.append(y_t)
    assert ((torch.stack(ys, 1) - ref).abs().max() / ref.abs().max()).item() < 1e-11


def test_chunk_size_does_not_change_results_or_gradients():
    torch.manual_seed(1)
    m = build(forget_gate="exp")
    x = torch.randn(2, 15, DIM, dtype=F64, requires_grad=True)
    outs = []
    for chunk in (2, 7, 64):
        m.chunk = chunk
        y, state = m(x, return_state=True)
        (g,) = torch.autograd.grad(y.square().sum(), x)
        outs.append((y, state, g))
    y0, s0, g0 = outs[0]
    for y, s, g in outs[1:]:
        torch.testing.assert_close(y, y0, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g, g0, rtol=1e-10, atol=1e-12)
        for a, b in zip(s, s0):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_official_initialisation():
    torch.manual_seed(0)
    m = MLSTM.factory([TensorType(("batch", "seq", 96))], **MLSTM.defaults())
    assert m.inner == inner_width(96, 2.0, 64) == 192 and m.head_dim == 48
    assert torch.equal(m.fgate.bias.detach(), torch.linspace(3.0, 6.0, 4))
    assert not m.igate.weight.any() and not m.fgate.weight.any() and not m.outnorm.weight.any()
    assert torch.equal(m.learnable_skip.detach(), torch.ones(192))
    assert abs(m.proj_up.weight.std().item() - math.sqrt(2 / (5 * 96))) < 0.01
    assert abs(m.proj_down.weight.std().item() - 2 / math.sqrt(96)) < 0.02


def test_shape_rule_explains_widths():
    args = MLSTM.defaults()
    with pytest.raises(ShapeError, match="not divisible by heads 5"):
        MLSTM.shape([TensorType(("b", "l", 8))], **{**args, "heads": 5})
    with pytest.raises(ShapeError, match="leaves no inner channel"):
        MLSTM.shape([TensorType(("b", "l", 8))], **{**args, "proj_factor": 0})
    with pytest.raises(ShapeError, match="qkv_blocksize 3"):
        MLSTM.shape([TensorType(("b", "l", 8))], **{**args, "heads": 1, "qkv_blocksize": 3, "round_to": 8})
