"""The sLSTM cell (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory", §2.2, Eqs. 8-17,
and the stabilised form of appendix A.2), run position after position.

Per head (d units), with pre-activations from the input (precomputed for every position) plus
the block-diagonal recurrent map of the previous output y_{t-1}::

    (ĩ, f̃, z̃, õ)_t = W x_t + R y_{t-1} + b              R: one d × 4d matrix per head
    f̂_t = log σ(f̃_t)  (or f̃_t for an exponential forget gate)
    m_t = max(ĩ_t, f̂_t + m_{t-1})   (m_t = ĩ_t where n_{t-1} = 0, the start)
    i'_t = exp(ĩ_t - m_t),  f'_t = exp(f̂_t + m_{t-1} - m_t)
    c_t = f'_t c_{t-1} + i'_t tanh(z̃_t),   n_t = f'_t n_{t-1} + i'_t
    y_t = σ(õ_t) ⊙ c_t / n_t

This is the official xlstm ``slstm_forward_pointwise`` (its "n = 0" start test taken per unit,
so that it compiles). The recurrence is sequential by nature: the input projections are done
for all positions before the loop, and each step is one batched matmul and a few pointwise ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SLSTMState = tuple[Tensor, Tensor, Tensor, Tensor]


def zero_slstm_state(batch: int, heads: int, d: int, *, device: torch.device | None, dtype: torch.dtype) -> SLSTMState:
    """(y, c, n, m), each (B, H, d), all zero."""
    return tuple(torch.zeros(batch, heads, d, device=device, dtype=dtype) for _ in range(4))  # type: ignore[return-value]


def slstm_cell(raw: Tensor, state: SLSTMState, exp_forget: bool = False) -> SLSTMState:
    """One step from pre-activations ``raw (B, H, 4, d)`` (gates i, f, z, o, recurrent part included)."""
    _, c, n, m = state
    i_raw, f_raw, z_raw, o_raw = raw.unbind(-2)
    log_f = (f_raw if exp_forget else F.logsigmoid(f_raw)) + m
    m_new = torch.where(n == 0, i_raw, torch.maximum(i_raw, log_f))
    i = torch.exp(i_raw - m_new)
    f = torch.exp(log_f - m_new)
    c = f * c + i * torch.tanh(z_raw)
    n = f * n + i
    return torch.sigmoid(o_raw) * c / n, c, n, m_new


def slstm_scan(
    wx: Tensor, R: Tensor, state: SLSTMState, mask: Tensor | None = None, exp_forget: bool = False
) -> tuple[Tensor, SLSTMState]:
    """All positions: ``wx (B, L, H, 4, d)`` input pre-activations (bias included), ``R (H, d, 4, d)``
    → (y (B, L, H, d), final state). Where ``mask (B, L)`` is False the state is kept.

    The loop runs head-major, (H, B, ·), so that each step's recurrent part is one ``baddbmm``
    onto the input pre-activations, with no transposes inside the loop."""
    B, L, H, _, d = wx.shape
    R2 = R.reshape(H, d, 4 * d)
    pre = wx.permute(1, 2, 0, 3, 4).reshape(L, H, B, 4, d).unbind(0)  # per position (H, B, 4, d)
    keep = None if mask is None else mask.t().reshape(L, 1, B, 1).unbind(0)
    st = tuple(s.transpose(0, 1) for s in state)  # (H, B, d)
    ys = []
    for t in range(L):
        raw = torch.baddbmm(pre[t].reshape(H, B, 4 * d), st[0], R2).view(H, B, 4, d)
        new = slstm_cell(raw, st, exp_forget)  # type: ignore[arg-type]
        if keep is not None:
            new = tuple(torch.where(keep[t], a, b) for a, b in zip(new, st))
        st = new
        ys.append(st[0])
    y = torch.stack(ys, 0).permute(2, 0, 1, 3)  # (B, L, H, d)
    return y, tuple(s.transpose(0, 1) for s in st)  # type: ignore[return-value]
