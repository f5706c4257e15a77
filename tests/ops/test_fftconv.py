"""``ssmgraph.ops.fftconv``: the FFT convolution against direct (causal and bidirectional) convolution."""

from __future__ import annotations

import torch

from ssmgraph.ops.fftconv import fft_conv

F64 = torch.float64


def direct_conv(u, k, k_rev=None):
    L = u.shape[-1]
    y = torch.zeros_like(u)
    for t in range(L):
        for s in range(L):
            if s <= t:
                y[..., t] += k[..., t - s] * u[..., s]
            elif k_rev is not None:
                y[..., t] += k_rev[..., s - t - 1] * u[..., s]
    return y


def test_fft_conv_is_linear_causal_convolution(rel_err):
    g = torch.Generator().manual_seed(4)
    u = torch.randn(2, 3, 11, dtype=F64, generator=g)
    k, k2 = torch.randn(3, 11, dtype=F64, generator=g), torch.randn(3, 11, dtype=F64, generator=g)
    assert rel_err(fft_conv(u, k), direct_conv(u, k)) < 1e-12
    assert rel_err(fft_conv(u, k, k2), direct_conv(u, k, k2)) < 1e-12
    # T2: a transform of length L wraps around (circular), so it is not the causal convolution
    n = u.shape[-1]
    circular = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    assert rel_err(circular, direct_conv(u, k)) > 1e-2
