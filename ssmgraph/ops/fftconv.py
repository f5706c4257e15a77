"""Convolution through the FFT with transform length 2L (linear, never circular), causal or bidirectional.

Reference: state-spaces/s4 ``models/s4/s4.py`` (``FFTConv``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def fft_conv(u: Tensor, k: Tensor, k_rev: Tensor | None = None) -> Tensor:
    """Convolution along the last dim through the FFT, with transform length 2L (never circular).

    ``u (..., L)`` and ``k (..., Lk)`` broadcast (Lk >= L; extra taps are ignored).
    Causal: ``y_t = Σ_{s<=t} k[t-s] u_s``. With ``k_rev``, adds the anti-causal half of the
    reference's bidirectional S4 convolution: ``Σ_{s>t} k_rev[s-t-1] u_s``.
    """
    L = u.shape[-1]
    k = k[..., :L]
    if k_rev is not None:
        k = torch.cat([k, k_rev[..., :L].flip(-1)], dim=-1)  # taps t-s in [-L, L)
    n = 2 * L
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return y[..., :L]
