"""mix.hyena against the reference operator written out with a direct causal convolution."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssmgraph.blocks.hyena import HYENA
from ssmgraph.registry.specs import ShapeError, TensorType

F64 = torch.float64
DIM = 6


def build(**over):
    """In fp64 from the start, so the positional features are not rounded through fp32."""
    args = {**HYENA.defaults(), "l_max": 16, "filter_order": 8, **over}
    default = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        return HYENA.factory([TensorType(("batch", "seq", DIM))], **args)
    finally:
        torch.set_default_dtype(default)


def reference_filter(m, L):
    """safari standalone_hyena.py: PositionalEmbedding (complex exponential), the Sin FFN and
    ExponentialModulation, for the first L of l_max positions → (channels, L)."""
    f, l_max = m.filter_fn, m.l_max
    emb_dim = f.z.shape[-1]
    bands = (emb_dim - 1) // 2
    t = torch.linspace(0, 1, l_max, dtype=F64)[None, :, None]
    w = 2 * math.pi * torch.linspace(0, l_max - 1, l_max, dtype=F64)[None, :, None] / l_max
    freqs = torch.linspace(1e-4, bands - 1, bands, dtype=F64)[None, None]
    zc = torch.exp(-1j * freqs * w)
    z = torch.cat([t, zc.real, zc.imag], dim=-1)[:, :L]
    h = z
    for layer in f.layers[:-1]:
        h = torch.sin(f.freq * F.linear(h, layer.weight, layer.bias))
    h = F.linear(h, f.layers[-1].weight)
    if f.use_modulation:
        h = h * (torch.exp(-t[:, :L] * f.deltas.abs()) + f.shift)
    return h[0].T


def direct_causal_conv(u, k):
    """y_t = Σ_{s ≤ t} k[t - s] u_s, taps past k's length being zero, by an explicit sum."""
    L = u.shape[-1]
    y = torch.zeros_like(u)
    for t in range(L):
        for s in range(max(0, t - k.shape[-1] + 1), t + 1):
            y[..., t] += k[..., t - s] * u[..., s]
    return y


def reference_operator(m, x):
    """safari HyenaOperator.forward with the long convolution done directly."""
    L, D = x.shape[1:]
    u = m.in_proj(x).transpose(1, 2)
    uc = F.conv1d(u, m.short_filter.weight, m.short_filter.bias, padding=2, groups=u.shape[1])[..., :L]
    *xs, v = uc.split(D, dim=1)
    k = reference_filter(m, min(L, m.l_max)).reshape(m.order - 1, D, -1)
    for o, x_i in enumerate(reversed(xs[1:])):
        v = v * x_i
        v = direct_causal_conv(v, k[o]) + m.bias[o].unsqueeze(-1) * v
    return m.out_proj((v * xs[0]).transpose(1, 2))


def test_filter_equals_the_reference_construction():
    torch.manual_seed(0)
    m = build(emb_dim=5, l_max=12, shift=0.05)
    assert torch.allclose(m.filter_fn(12), reference_filter(m, 12), rtol=1e-12, atol=1e-14)
    assert m.filter_fn(30).shape == (DIM, 12)  # l_max taps at most


@pytest.mark.parametrize("over,L", [({}, 9), ({"order": 3, "l_max": 5}, 11), ({"l_max": 4, "modulate": False}, 7)])
def test_fft_forward_equals_direct_convolution_and_steps(over, L):
    torch.manual_seed(0)
    m = build(**over)
    x = torch.randn(2, L, DIM, dtype=F64)
    ref = reference_operator(m, x)
    y = m(x)
    assert ((y - ref).abs().max() / ref.abs().max()).item() < 1e-11
    state = m.init_state(2, dtype=F64)
    ys = []
    for t in range(L):
        y_t, state = m.step(x[:, t], state)
        ys.append(y_t)
    assert ((torch.stack(ys, 1) - ref).abs().max() / ref.abs().max()).item() < 1e-11
    assert state[1].shape[-1] == min(L, m.l_max - 1)  # the cache never holds more than l_max - 1 positions


def test_chunks_longer_than_the_filter_carry_the_state():
    torch.manual_seed(1)
    m = build(l_max=4)
    x = torch.randn(2, 13, DIM, dtype=F64)
    y = m(x)
    y1, s1 = m(x[:, :6], return_state=True)
    y2, s2 = m(x[:, 6:], state=s1, return_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-11, atol=1e-12)
    _, s = m(x, return_state=True)
    for a, b in zip(s, s2):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_shape_rule_and_optimizer_hints():
    args = {**HYENA.defaults()}
    with pytest.raises(ShapeError, match="emb_dim must be odd"):
        HYENA.shape([TensorType(("b", "l", 8))], **{**args, "emb_dim": 4})
    with pytest.raises(ShapeError, match="target"):
        HYENA.shape([TensorType(("b", "l", 8))], **{**args, "target": 1.0})
    m = build()
    assert m.filter_fn.z._optim == {"weight_decay": 0.0, "lr": 1e-5}
    assert m.filter_fn.layers[0].weight._optim == {"weight_decay": 0.0, "lr": 1e-3}
    assert "filter_fn.deltas" in m.state_dict() and not any(n.endswith("deltas") for n, _ in m.named_parameters())
