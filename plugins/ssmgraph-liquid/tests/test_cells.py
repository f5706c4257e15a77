"""mix.ltc and mix.cfc against per-step references written from the formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmgraph.registry.plugins import get_registry
from ssmgraph.registry.specs import TensorType

F64 = torch.float64
DIM = 3


def build(name: str, **args):
    spec = get_registry().get(name)
    return spec.factory([TensorType(("batch", "seq", DIM))], **{**spec.defaults(), **args}).double().eval()


def ltc_reference(m, x: torch.Tensor) -> torch.Tensor:
    """ncps's LTCCell, neuron by neuron and synapse by synapse."""
    batch, length, _ = x.shape
    U = m.units
    v = torch.zeros(batch, U, dtype=F64)
    sp = F.softplus
    outs = []
    for t in range(length):
        u = x[:, t] * m.input_w + m.input_b
        for _ in range(m.ode_unfolds):
            new = torch.empty_like(v)
            for i in range(U):
                num = sp(m.cm[i]) * m.ode_unfolds * v[:, i] + sp(m.gleak[i]) * m.vleak[i]
                den = sp(m.cm[i]) * m.ode_unfolds + sp(m.gleak[i])
                for j in range(U):
                    a = sp(m.w[j, i]) * torch.sigmoid(m.sigma[j, i] * (v[:, j] - m.mu[j, i]))
                    num, den = num + a * m.erev[j, i], den + a
                for k in range(DIM):
                    a = sp(m.sensory_w[k, i]) * torch.sigmoid(m.sensory_sigma[k, i] * (u[:, k] - m.sensory_mu[k, i]))
                    num, den = num + a * m.sensory_erev[k, i], den + a
                new[:, i] = num / (den + 1e-8)
            v = new
        outs.append(v @ m.out_proj.weight.T + m.out_proj.bias)
    return torch.stack(outs, 1)


def test_ltc_equals_the_synapse_by_synapse_reference():
    torch.manual_seed(0)
    m = build("mix.ltc", units=4, ode_unfolds=3)
    x = torch.randn(2, 5, DIM, dtype=F64)
    torch.testing.assert_close(m(x), ltc_reference(m, x), rtol=1e-10, atol=1e-12)


def test_ltc_initialisation_follows_ncps():
    torch.manual_seed(0)
    m = build("mix.ltc", units=40)
    ranges = {"cm": (0.4, 0.6), "gleak": (0.001, 1.0), "w": (0.001, 1.0), "sensory_w": (0.001, 1.0)}
    for name, (lo, hi) in ranges.items():  # positive parameters: ranges of the softplus
        value = F.softplus(getattr(m, name))
        assert lo - 1e-9 <= value.min() and value.max() <= hi + 1e-9, name
    for name, (lo, hi) in {"vleak": (-0.2, 0.2), "mu": (0.3, 0.8), "sigma": (3.0, 8.0)}.items():
        value = getattr(m, name)
        assert lo <= value.min() and value.max() <= hi, name
    erev = torch.cat([m.erev.flatten(), m.sensory_erev.flatten()])
    assert set(erev.tolist()) == {-1.0, 1.0}
    assert abs((erev > 0).double().mean().item() - 2 / 3) < 0.05  # ncps draws polarity from [-1, 1, 1]


@pytest.mark.parametrize("mode", ["default", "no_gate", "pure"])
def test_cfc_equals_the_closed_form_per_step(mode):
    torch.manual_seed(1)
    m = build("mix.cfc", units=5, backbone_units=7, backbone_layers=1, mode=mode)
    x = torch.randn(2, 6, DIM, dtype=F64)
    h = torch.zeros(2, 5, dtype=F64)
    lin = lambda layer, z: z @ layer.weight.T + layer.bias
    outs = []
    for t in range(x.shape[1]):
        z = 1.7159 * torch.tanh(0.666 * lin(m.backbone[0], torch.cat([x[:, t], h], -1)))
        if mode == "pure":
            f1 = lin(m.ff1, z)
            h = -m.A * torch.exp(-(m.w_tau.abs() + f1.abs())) * f1 + m.A
        else:
            f1, f2 = torch.tanh(lin(m.ff1, z)), torch.tanh(lin(m.ff2, z))
            gate = torch.sigmoid(lin(m.time_a, z) + lin(m.time_b, z))
            h = f1 + gate * f2 if mode == "no_gate" else f1 * (1 - gate) + gate * f2
        outs.append(lin(m.out_proj, h))
    torch.testing.assert_close(m(x), torch.stack(outs, 1), rtol=1e-10, atol=1e-12)


def test_cfc_weights_start_xavier_uniform():
    torch.manual_seed(2)
    m = build("mix.cfc", units=5, backbone_units=7, mode="pure")
    for name, p in m.named_parameters():
        if p.dim() == 2 and not name.startswith("out_proj"):
            bound = (6 / (p.shape[0] + p.shape[1])) ** 0.5
            assert p.abs().max() <= bound and p.abs().max() > 0.2 * bound, name
    assert m.w_tau.shape == m.A.shape == (1, 5)  # ncps's shapes, so Xavier reaches them too
