"""Causal autoencoders on hidden states: no output reads a later position."""

from __future__ import annotations

import math

import pytest
import torch

from ssmgraph.blocks.blend import CausalAutoencoder

CONFIGS = [
    {"kind": "linear"},
    {"kind": "linear", "residual": True, "bottleneck": 0.5},
    {"kind": "causal_conv", "kernel": 3},
    {"kind": "causal_conv", "kernel": 5, "residual": True, "bottleneck": 0.25},
    {"kind": "causal_conv", "kernel": 1},
]


def _init(ae: CausalAutoencoder, seed: int) -> CausalAutoencoder:
    """Non-zero weights everywhere (a residual decoder starts at zero, which would hide leaks)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return ae


@pytest.mark.parametrize("config", CONFIGS)
def test_shapes(config):
    ae = CausalAutoencoder(12, **config)
    out = ae(torch.randn(3, 9, 12))
    assert out.shape == (3, 9, 12)
    assert ae.inner == max(1, math.ceil(12 * config.get("bottleneck", 0.75)))


@pytest.mark.parametrize("config", CONFIGS)
def test_later_positions_never_change_earlier_outputs(config):
    ae = _init(CausalAutoencoder(8, **config), 0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 11, 8, generator=g)
    base = ae(x)
    for t in range(10):
        changed = x.clone()
        changed[:, t + 1 :] = torch.randn(2, 10 - t, 8, generator=g) * 5.0
        out = ae(changed)
        assert torch.equal(out[:, : t + 1], base[:, : t + 1]), f"output ≤ {t} changed with inputs > {t}"
        assert not torch.equal(out[:, t + 1 :], base[:, t + 1 :])


def test_causal_conv_reads_exactly_kernel_positions():
    ae = _init(CausalAutoencoder(6, kind="causal_conv", kernel=3), 2)
    x = torch.randn(1, 10, 6, generator=torch.Generator().manual_seed(3))
    base = ae(x)
    t = 7
    for s, reads in ((t, True), (t - 1, True), (t - 2, True), (t - 3, False)):
        changed = x.clone()
        changed[:, s] += 1.0
        assert torch.equal(ae(changed)[:, t], base[:, t]) is not reads


def test_residual_starts_near_the_identity():
    ae = CausalAutoencoder(10, kind="causal_conv", residual=True)
    x = torch.randn(2, 5, 10)
    assert (ae(x) - x).abs().max() < 0.05 * x.abs().max()


@pytest.mark.parametrize("activation,limit", [("identity", 1e-6), ("gelu", 1e-3)])
def test_full_bottleneck_reconstructs_low_rank_data(activation, limit):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 32, 4, generator=g) @ torch.randn(4, 16, generator=g)  # rank 4 in 16 dims
    torch.manual_seed(0)
    ae = CausalAutoencoder(16, bottleneck=1.0, activation=activation)
    optimizer = torch.optim.Adam(ae.parameters(), lr=1e-2)
    for _ in range(300):
        loss = (ae(x) - x).square().mean() / x.var()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert float((ae(x) - x).square().mean() / x.var()) < limit


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        CausalAutoencoder(4, kind="conv")
    with pytest.raises(ValueError, match="activation"):
        CausalAutoencoder(4, activation="swish")
    with pytest.raises(ValueError, match="kernel"):
        CausalAutoencoder(4, kind="causal_conv", kernel=0)
    with pytest.raises(ValueError, match="B×L×4"):
        CausalAutoencoder(4)(torch.randn(3, 4))
