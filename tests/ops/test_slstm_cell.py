"""The sLSTM cell loop against the paper's equations written out with a dense block-diagonal R."""

from __future__ import annotations

import pytest
import torch

from ssmgraph.ops.slstm import slstm_scan, zero_slstm_state

F64 = torch.float64


def paper_slstm(wx, R, exp_forget):
    """Eqs. 8-17 without a stabiliser: per unit c = f c + i z, n = f n + i, y = o c / n, with the
    recurrent pre-activations of all heads from one dense (H·d, 4·H·d) block-diagonal matrix."""
    B, L, H, _, d = wx.shape
    blocks = [R[h].reshape(d, 4 * d) for h in range(H)]
    dense = torch.block_diag(*blocks)  # (H·d, H·4·d): head h's rows read its d outputs
    y = c = n = torch.zeros(B, H * d, dtype=wx.dtype)
    ys = []
    for t in range(L):
        rec = (y @ dense).reshape(B, H, 4, d)
        pre = wx[:, t] + rec
        i = torch.exp(pre[:, :, 0]).reshape(B, -1)
        f = (torch.exp(pre[:, :, 1]) if exp_forget else torch.sigmoid(pre[:, :, 1])).reshape(B, -1)
        z = torch.tanh(pre[:, :, 2]).reshape(B, -1)
        o = torch.sigmoid(pre[:, :, 3]).reshape(B, -1)
        c = f * c + i * z
        n = f * n + i
        y = o * c / n
        ys.append(y.reshape(B, H, d))
    return torch.stack(ys, 1)


@pytest.mark.parametrize("exp_forget", [False, True])
def test_scan_equals_the_paper_equations(exp_forget):
    gen = torch.Generator().manual_seed(0)
    B, L, H, d = 2, 11, 3, 4
    wx = torch.randn(B, L, H, 4, d, generator=gen, dtype=F64)
    R = 0.5 * torch.randn(H, d, 4, d, generator=gen, dtype=F64)
    y, (y_last, c, n, m) = slstm_scan(wx, R, zero_slstm_state(B, H, d, device=None, dtype=F64), exp_forget=exp_forget)
    ref = paper_slstm(wx, R, exp_forget)
    assert ((y - ref).abs().max() / ref.abs().max()).item() < 1e-12
    assert torch.equal(y_last, y[:, -1])
    # the stabilised state is the paper's times exp(-m)
    assert torch.isfinite(c).all() and torch.isfinite(m).all() and (n > 0).all()


def test_large_input_gates_stay_finite():
    gen = torch.Generator().manual_seed(1)
    B, L, H, d = 1, 30, 2, 3
    wx = 60 * torch.randn(B, L, H, 4, d, generator=gen)
    R = torch.randn(H, d, 4, d, generator=gen)
    y, state = slstm_scan(wx, R, zero_slstm_state(B, H, d, device=None, dtype=torch.float32))
    assert torch.isfinite(y).all() and all(torch.isfinite(s).all() for s in state)


def test_masked_positions_keep_the_state():
    gen = torch.Generator().manual_seed(2)
    B, L, H, d = 2, 7, 2, 3
    wx = torch.randn(B, L, H, 4, d, generator=gen, dtype=F64)
    R = torch.randn(H, d, 4, d, generator=gen, dtype=F64)
    mask = torch.arange(L)[None] < torch.tensor([[7], [4]])
    zero = zero_slstm_state(B, H, d, device=None, dtype=F64)
    _, state = slstm_scan(wx, R, zero, mask)
    _, alone = slstm_scan(wx[1:, :4], R, zero_slstm_state(1, H, d, device=None, dtype=F64))
    assert all(torch.allclose(a[1:], b, rtol=1e-12, atol=0) for a, b in zip(state, alone))
