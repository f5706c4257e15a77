from __future__ import annotations

import pytest
import torch
from torch import nn

from ssmgraph.blocks import projection
from ssmgraph.registry.specs import ShapeError, TensorType

SPEC = projection.STITCH_LINEAR


def test_spec_is_well_formed():
    assert [s.name for s in projection.ssmgraph_blocks()] == ["stitch.linear"]
    assert SPEC.validate() == [] and SPEC.role == "stitch"
    assert SPEC.capabilities(SPEC.defaults()).pointwise


def test_maps_input_dim_to_dim(build, out_type, grads_reach_all):
    m = build(SPEC, 12, dim=5)
    assert isinstance(m, nn.Linear) and isinstance(m, projection.StitchLinear)
    assert tuple(m.weight.shape) == (5, 12)
    x = torch.randn(2, 3, 12)
    torch.testing.assert_close(m(x), x @ m.weight.T + m.bias)
    m(x).pow(2).sum().backward()
    grads_reach_all(m)
    assert list(build(SPEC, 12, dim=5, bias=False).state_dict()) == ["weight"]


def test_shape_rule(out_type):
    assert out_type(SPEC, 12, dim=5) == TensorType(("batch", "seq", 5))
    with pytest.raises(ShapeError):
        out_type(SPEC, TensorType(("batch", "seq"), "int"), dim=5)
    with pytest.raises(ShapeError):
        out_type(SPEC, TensorType(("batch", "seq", "d")), dim=5)
