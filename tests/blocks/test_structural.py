from __future__ import annotations

import pytest
import torch
from torch import nn

from ssmgraph.blocks import structural
from ssmgraph.registry.specs import ShapeError, TensorType

SPECS = structural.ssmgraph_blocks()


def test_hook_lists_the_structural_blocks():
    assert [s.name for s in SPECS] == [
        "struct.add",
        "struct.mul",
        "struct.mean",
        "struct.concat",
        "struct.linear",
        "struct.dropout",
    ]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_spec_is_well_formed_and_pointwise(spec):
    assert spec.validate() == []
    caps = spec.capabilities(spec.defaults())
    assert caps.pointwise and caps.causal and not caps.step and not caps.bidirectional


def test_add_and_mul_are_elementwise_over_any_number_of_inputs(build):
    xs = [torch.randn(2, 5, 3) for _ in range(3)]
    assert structural.ADD.variadic and structural.MUL.variadic
    torch.testing.assert_close(build(structural.ADD, 3, 3, 3)(*xs), xs[0] + xs[1] + xs[2])
    torch.testing.assert_close(build(structural.MUL, 3, 3, 3)(*xs), xs[0] * xs[1] * xs[2])
    torch.testing.assert_close(build(structural.ADD, 3, 3)(*xs[:2]), xs[0] + xs[1])


def test_concat_joins_feature_dims(build, out_type):
    a, b, c = torch.randn(2, 4, 3), torch.randn(2, 4, 1), torch.randn(2, 4, 5)
    y = build(structural.CONCAT, 3, 1, 5)(a, b, c)
    assert y.shape == (2, 4, 9)
    torch.testing.assert_close(y[..., :3], a)
    torch.testing.assert_close(y[..., 3:4], b)
    torch.testing.assert_close(y[..., 4:], c)
    assert out_type(structural.CONCAT, 3, 1, 5) == TensorType(("batch", "seq", 9))


@pytest.mark.parametrize("spec", [structural.ADD, structural.MUL], ids=lambda s: s.name)
def test_add_mul_shape_rule(spec, out_type):
    assert out_type(spec, 8, 8, 8) == TensorType(("batch", "seq", 8))
    with pytest.raises(ShapeError, match="one shape"):
        out_type(spec, 8, 9)
    with pytest.raises(ShapeError, match="one shape"):
        out_type(spec, TensorType(("batch", "seq", 8)), TensorType(("batch", "src", 8)))
    with pytest.raises(ShapeError, match="two or more"):
        out_type(spec, 8)
    with pytest.raises(ShapeError, match="float"):
        out_type(spec, TensorType(("batch", "seq"), "int"), TensorType(("batch", "seq"), "int"))


def test_concat_shape_rule_checks_leading_dims(out_type):
    with pytest.raises(ShapeError, match="leading"):
        out_type(structural.CONCAT, TensorType(("batch", "seq", 4)), TensorType(("batch", "other", 4)))
    with pytest.raises(ShapeError, match="two or more"):
        out_type(structural.CONCAT, 4)


def test_linear_is_affine_map_to_dim(build, out_type):
    lin = build(structural.LINEAR, 6, dim=4)
    x = torch.randn(2, 3, 6)
    torch.testing.assert_close(lin(x), x @ lin.weight.T + lin.bias)
    assert tuple(lin.weight.shape) == (4, 6)
    assert dict(build(structural.LINEAR, 6, dim=4, bias=False).named_parameters()).keys() == {"weight"}
    assert out_type(structural.LINEAR, 6, dim=4) == TensorType(("batch", "seq", 4))
    with pytest.raises(ShapeError):
        out_type(structural.LINEAR, TensorType(("batch", "seq"), "int"), dim=4)


def test_dropout_train_and_eval(build):
    drop = build(structural.DROPOUT, 8, p=0.5)
    assert isinstance(drop, nn.Dropout)
    x = torch.ones(64, 64, 8)
    y = drop.train()(x)
    zeros = (y == 0).float().mean().item()
    assert 0.45 < zeros < 0.55
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 2.0))
    torch.testing.assert_close(drop.eval()(x), x)
    assert structural.DROPOUT.param("p").check(1.5)[1] is not None


def test_mean_averages_its_inputs():
    from ssmgraph.blocks.structural import MEAN

    a, b, c = torch.randn(3, 2, 4, 5)
    module = MEAN.factory([TensorType(("batch", "seq", 5))] * 3)
    torch.testing.assert_close(module(a, b, c), (a + b + c) / 3)
    with pytest.raises(ShapeError):
        MEAN.shape([TensorType(("b", "l", 5)), TensorType(("b", "l", 6))])
