from __future__ import annotations

import pytest
import torch
from torch import nn

from ssmgraph.blocks import norm
from ssmgraph.registry.specs import ShapeError, TensorType


@pytest.mark.parametrize("spec", norm.ssmgraph_blocks(), ids=lambda s: s.name)
def test_spec_is_well_formed(spec, out_type):
    assert spec.validate() == []
    assert spec.capabilities(spec.defaults()).pointwise
    assert out_type(spec, 8) == TensorType(("batch", "seq", 8))
    with pytest.raises(ShapeError):
        out_type(spec, TensorType(("batch", "seq"), "int"))


def test_rmsnorm_equals_formula(build):
    m = build(norm.RMS, 8, eps=1e-3).double()
    with torch.no_grad():
        m.weight.normal_()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-3) * m.weight
    torch.testing.assert_close(m(x), expected, rtol=1e-12, atol=1e-12)
    assert list(m.state_dict()) == ["weight"] and m.eps == 1e-3
    assert build(norm.RMS, 8).eps == 1e-6


def test_rmsnorm_normalises_in_fp32_then_casts_back(build):
    m = build(norm.RMS, 64).to(torch.bfloat16)
    x = (torch.randn(4, 64) * 300).to(torch.bfloat16)
    y = m(x)
    assert y.dtype == torch.bfloat16
    xf = x.float()
    expected = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16) * m.weight
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_layernorm_equals_formula_and_options(build):
    m = build(norm.LAYER, 8).double()
    assert isinstance(m, nn.LayerNorm) and m.eps == 1e-5
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(m(x), (x - mu) / torch.sqrt(var + 1e-5) * m.weight + m.bias, rtol=1e-12, atol=1e-12)
    assert list(build(norm.LAYER, 8, bias=False).state_dict()) == ["weight"]


@pytest.mark.parametrize("spec", norm.ssmgraph_blocks(), ids=lambda s: s.name)
def test_gradients_reach_every_parameter(build, grads_reach_all, spec):
    m = build(spec, 8)
    (m(torch.randn(2, 3, 8)) * torch.randn(2, 3, 8)).sum().backward()
    grads_reach_all(m)
