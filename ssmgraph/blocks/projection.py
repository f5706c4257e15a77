"""The stitching layer (block ``stitch.linear``): a learnable affine map between two representation spaces.

Used to project taps of different models into one common dimension (for
feature-consistency losses through projection layers) and as the stitching layer that
connects the bottom of one model to the top of another (Lenc & Vedaldi 2015,
"Understanding image representations by measuring their equivariance and equivalence";
Bansal, Nakkiran & Barak 2021, "Revisiting Model Stitching"). Merge methods may set its
weight from a closed-form alignment (CCA, least squares, optimal transport).

It reads its input features on its weight's columns and writes its output features on the
rows and bias, so permutation alignment permutes a tap projection with the value it reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ssmgraph.blocks.embed import linear_spaces
from ssmgraph.ops.linear import Linear
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import BlockSpec, Param, TensorType, same_as_input


class StitchLinear(Linear):
    """y = x Wᵀ + b from the input dim to ``dim`` (an ``nn.Linear``; the class marks its role)."""


def _shape(in_types: Sequence[TensorType], *, dim: int, **_: Any) -> TensorType:
    return same_as_input(in_types).with_dim(dim)


STITCH_LINEAR = BlockSpec(
    name="stitch.linear",
    examples=({"dim": 6},),
    role="stitch",
    doc="Learnable linear map from the input dim to `dim`: tap projections and model stitching.",
    params=(
        Param("dim", int, doc="output feature dimension (the common space)", min=1),
        Param("bias", bool, True, "learn an additive bias"),
    ),
    factory=lambda in_types, *, dim, bias: StitchLinear(in_types[0].dim, dim, bias=bias),
    shape=_shape,
    perm_spaces=linear_spaces,
    pointwise=True,
    reference="Bansal, Nakkiran & Barak 2021, Revisiting Model Stitching",
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [STITCH_LINEAR]
