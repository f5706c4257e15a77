"""mix.slstm against the official xlstm layer written out with the paper's unstabilised cell."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmgraph.blocks.slstm import SLSTM
from ssmgraph.registry.specs import ShapeError, TensorType

F64 = torch.float64
DIM = 8


def build(**over):
    m = SLSTM.factory([TensorType(("batch", "seq", DIM))], **{**SLSTM.defaults(), **over}).double()
    with torch.no_grad():  # a non-zero recurrent matrix and norm weight instead of the zero init
        m.recurrent_kernel.normal_(0, 0.4)
        m.group_norm.weight.normal_(0, 0.2)
    return m


def official_layer(m, x, exp_forget=False):
    """xlstm sLSTMLayer.forward: conv → i, f gates; z, o from the input; the cell of Eqs. 8-17
    unstabilised, its recurrent pre-activations from each head's own d × 4d block."""
    B, S, D = x.shape
    H, d, K = m.heads, m.head_dim, m.conv_kernel
    if K:
        xc = F.silu(F.conv1d(x.transpose(1, 2), m.conv1d.weight, m.conv1d.bias, padding=K - 1, groups=D)[..., :S].transpose(1, 2))
    else:
        xc = x

    def headwise(gate, t):
        return torch.einsum("bshi,hoi->bsho", t.view(B, S, H, d), gate.weight)

    wx = torch.stack([headwise(m.igate, xc), headwise(m.fgate, xc), headwise(m.zgate, x), headwise(m.ogate, x)], dim=3)
    wx = wx + m.bias  # (B, S, H, 4, d)
    y = c = n = torch.zeros(B, H, d, dtype=x.dtype)
    ys = []
    for t in range(S):
        pre = wx[:, t] + torch.einsum("bhi,higj->bhgj", y, m.recurrent_kernel)
        i = torch.exp(pre[:, :, 0])
        f = torch.exp(pre[:, :, 1]) if exp_forget else torch.sigmoid(pre[:, :, 1])
        c = f * c + i * torch.tanh(pre[:, :, 2])
        n = f * n + i
        y = torch.sigmoid(pre[:, :, 3]) * c / n
        ys.append(y)
    h = torch.stack(ys, 1).reshape(B * S, D)
    return F.group_norm(h, H, 1 + m.group_norm.weight, None, 1e-5).view(B, S, D)


@pytest.mark.parametrize("over", [{}, {"heads": 2, "conv_kernel": 0, "forget_gate": "exp"}, {"heads": 1, "conv_kernel": 2}])
def test_forward_and_step_equal_the_official_layer(over):
    torch.manual_seed(0)
    m = build(**over)
    x = torch.randn(2, 9, DIM, dtype=F64)
    ref = official_layer(m, x, over.get("forget_gate") == "exp")
    y = m(x)
    assert ((y - ref).abs().max() / ref.abs().max()).item() < 1e-11
    state = m.init_state(2, dtype=F64)
    ys = []
    for t in range(x.shape[1]):
        y_t, state = m.step(x[:, t], state)
        ys.append(y_t)
    assert ((torch.stack(ys, 1) - ref).abs().max() / ref.abs().max()).item() < 1e-11


def test_official_initialisation():
    m = SLSTM.factory([TensorType(("batch", "seq", 32))], **SLSTM.defaults())
    assert not m.recurrent_kernel.any() and not m.group_norm.weight.any()
    fb = m.bias[:, 1]
    assert torch.allclose(fb[:, 0], torch.full((4,), 5.0)) and torch.allclose(fb[:, -1], torch.full((4,), -7.0))
    assert not m.bias[:, [0, 2, 3]].any()


def test_shape_rule():
    with pytest.raises(ShapeError, match="not divisible by heads 3"):
        SLSTM.shape([TensorType(("b", "l", 8))], **{**SLSTM.defaults(), "heads": 3})


def test_xlstm_blueprint_puts_one_slstm_block_with_its_ffn_at_layer_1():
    import ssmgraph

    model = ssmgraph.build("xlstm", d_model=16, layers=3)
    mixers = [model.nodes[f"blocks.{i}.mix"].block for i in range(3)]
    assert mixers == ["mix.mlstm", "mix.slstm", "mix.mlstm"]
    assert model.nodes["blocks.1.ffn"].block == "ffn.glu" and "blocks.0.ffn" not in model.nodes
    assert model.supports_step
