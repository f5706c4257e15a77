"""Short causal depthwise convolution with a carried window of past inputs (mixer state).

The window (B, C, K) holds the last K inputs before the sequence, oldest first, as mix.mamba's
``conv_state``: prepending its last K - 1 entries makes chunked processing equal one pass.
"""

from __future__ import annotations

import torch
from torch import Tensor


def causal_conv(u: Tensor, weight: Tensor, bias: Tensor | None, window: Tensor | None) -> Tensor:
    """``y_t = Σ_j weight[:, 0, j] u_{t-K+1+j} + bias`` per channel, ``u (B, C, L)``, ``weight (C, 1, K)``.

    Inputs before the sequence come from ``window (B, C, K)`` (zeros when None)."""
    K, L = weight.shape[-1], u.shape[-1]
    padded = padded_inputs(u, window, K)
    # K shifted multiply-adds: as fast as a depthwise conv1d for the short kernels used here, and
    # free of its slow grouped fallback (fp64 on CPU runs one convolution per channel)
    y = sum(weight[:, 0, j, None] * padded[..., j : j + L] for j in range(K))
    return y if bias is None else y + bias[:, None]


def padded_inputs(u: Tensor, window: Tensor | None, K: int) -> Tensor:
    """``u (B, C, L)`` preceded by the K - 1 inputs before it (``window``'s newest, zeros when None)
    → (B, C, K - 1 + L): the input of an unpadded convolution (``nn.Conv1d`` with ``padding=0``)."""
    past = u.new_zeros(*u.shape[:-1], K - 1) if window is None else window[..., 1:].to(u.dtype)
    return torch.cat([past, u], dim=-1)


def last_inputs(u: Tensor, window: Tensor | None, K: int, lengths: Tensor | None = None) -> Tensor:
    """The window after ``u (B, C, L)``: its last K inputs (each sequence's last valid ones when
    ``lengths (B,)`` is given), preceded by ``window``'s entries (zeros when None)."""
    past = u.new_zeros(*u.shape[:-1], K) if window is None else window.to(u.dtype)
    if lengths is None:  # the last K entries only: copy no more of u than that
        inputs = torch.cat([past, u[..., max(u.shape[-1] - K, 0) :]], dim=-1)
        return inputs[..., inputs.shape[-1] - K :]
    inputs = torch.cat([past, u], dim=-1)  # (B, C, K + L)
    ends = lengths[:, None] + torch.arange(K, device=u.device)  # (B, K)
    return inputs.gather(2, ends.unsqueeze(1).expand(-1, u.shape[1], -1))


def step_window(window: Tensor, u_t: Tensor) -> Tensor:
    """The window after one more input ``u_t (B, C)``."""
    return torch.cat([window[..., 1:].to(u_t.dtype), u_t.unsqueeze(-1)], dim=-1)


def conv_step(window: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The convolution's output at the newest entry of ``window (B, C, K)`` → (B, C)."""
    y = (window * weight[:, 0]).sum(-1)
    return y if bias is None else y + bias


def pad_mask(x: Tensor, mask: Tensor | None) -> Tensor:
    """``x (B, L, ...)`` with positions where ``mask (B, L)`` is False set to zero (None: unchanged)."""
    if mask is None:
        return x
    return x * mask.view(*mask.shape, *([1] * (x.dim() - 2))).to(x.dtype)
