from __future__ import annotations

import math

import pytest
import torch

from ssmgraph.blocks import ffn
from ssmgraph.registry.specs import ShapeError, TensorType

MLP, GLU = ffn.MLP_SPEC, ffn.GLU_SPEC


def gelu_exact(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


ACTS = {
    "gelu": gelu_exact,
    "gelu_tanh": gelu_tanh,
    "relu": lambda x: torch.clamp(x, min=0),
    "silu": lambda x: x / (1 + torch.exp(-x)),
}


@pytest.mark.parametrize("spec", ffn.ssmgraph_blocks(), ids=lambda s: s.name)
def test_spec_is_well_formed_and_pointwise(spec, out_type):
    assert spec.validate() == []
    caps = spec.capabilities(spec.defaults())
    assert caps.pointwise and caps.causal and not caps.step
    assert out_type(spec, 8) == TensorType(("batch", "seq", 8))
    with pytest.raises(ShapeError):
        out_type(spec, TensorType(("batch", "seq"), "int"))


@pytest.mark.parametrize("activation", ["gelu", "relu", "silu", "gelu_tanh"])
def test_mlp_equals_formula(build, activation):
    m = build(MLP, 8, activation=activation).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    h = ACTS[activation](x @ m.fc1.weight.T + m.fc1.bias)
    torch.testing.assert_close(m(x), h @ m.fc2.weight.T + m.fc2.bias, rtol=1e-12, atol=1e-12)


def test_mlp_sizes_names_and_dropout(build):
    m = build(MLP, 8)
    assert tuple(m.fc1.weight.shape) == (32, 8) and tuple(m.fc2.weight.shape) == (8, 32)
    m = build(MLP, 8, hidden=5, bias=False)
    assert set(m.state_dict()) == {"fc1.weight", "fc2.weight"} and m.fc1.out_features == 5
    m = build(MLP, 8, dropout=0.5)
    x = torch.randn(4, 16, 8)
    assert not torch.allclose(m.train()(x), m.eval()(x))
    torch.testing.assert_close(m.eval()(x), m.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_glu_equals_formula(build, activation):
    m = build(GLU, 8, hidden=12, activation=activation, bias=True).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    gate = ACTS[activation](x @ m.w_gate.weight.T + m.w_gate.bias)
    up = x @ m.w_up.weight.T + m.w_up.bias
    torch.testing.assert_close(m(x), (gate * up) @ m.w_down.weight.T + m.w_down.bias, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("dim", "multiple_of", "hidden"), [(64, 64, 192), (96, 32, 256), (4096, 256, 11008)])
def test_glu_default_hidden_is_llamas(dim, multiple_of, hidden):
    assert ffn.glu_hidden(dim, multiple_of) == hidden  # 4096 -> 11008 is Llama-7B's FFN width


def test_glu_names_and_default_width(build):
    m = build(GLU, 64)
    assert set(m.state_dict()) == {"w_gate.weight", "w_up.weight", "w_down.weight"}
    assert m.w_gate.out_features == m.w_up.out_features == m.w_down.in_features == 192
    assert build(GLU, 64, hidden=10).w_gate.out_features == 10


@pytest.mark.parametrize("spec", [MLP, GLU], ids=lambda s: s.name)
def test_gradients_reach_every_parameter(build, grads_reach_all, spec):
    m = build(spec, 8, bias=True)
    m(torch.randn(2, 3, 8)).pow(2).sum().backward()
    grads_reach_all(m)
