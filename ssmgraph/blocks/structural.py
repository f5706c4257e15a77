"""Structural blocks: the wiring between functional blocks.

``struct.add`` (residual connections, "x + Sublayer(x)" of Vaswani et al. 2017),
``struct.mul`` (multiplicative gates as in H3 / gated MLPs), ``struct.concat`` (feature
concatenation), ``struct.linear`` (a plain projection) and ``struct.dropout``
(Srivastava et al. 2014). All are pointwise: every position is computed on its own.

Feature spaces: add, mul, mean and dropout act feature by feature, so their inputs and output
share one space (``<through>``); ``struct.linear`` reads its input features on its weight's
columns and writes its output features on its rows and bias; ``struct.concat`` places its
inputs at fixed offsets, so it keeps the feature order of its inputs and output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ssmgraph.blocks.embed import linear_spaces
from ssmgraph.ops.linear import Linear
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import THROUGH_SPACE, BlockSpec, Param, PermSpace, ShapeError, TensorType, same_as_input


class Add(nn.Module):
    """Elementwise sum of two or more tensors of one shape."""

    def forward(self, *xs: Tensor) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Mul(nn.Module):
    """Elementwise product of two or more tensors of one shape."""

    def forward(self, *xs: Tensor) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out


class Mean(nn.Module):
    def forward(self, *xs: Tensor) -> Tensor:
        return torch.stack(xs).mean(0)


class Concat(nn.Module):
    """Concatenation along the feature (last) dimension."""

    def forward(self, *xs: Tensor) -> Tensor:
        return torch.cat(xs, dim=-1)


def _float_inputs(in_types: Sequence[TensorType], name: str) -> None:
    if len(in_types) < 2:
        raise ShapeError(f"{name} takes two or more inputs, got {len(in_types)}")
    for i, t in enumerate(in_types):
        if t.dtype != "float":
            raise ShapeError(f"{name} expects float features, input {i} is {t}")


def _equal_shapes(in_types: Sequence[TensorType], name: str) -> TensorType:
    _float_inputs(in_types, name)
    first = in_types[0]
    for i, t in enumerate(in_types[1:], start=1):
        if tuple(t.shape) != tuple(first.shape):
            raise ShapeError(f"{name} needs inputs of one shape: input 0 is {first}, input {i} is {t}")
    return first


def _add_shape(in_types: Sequence[TensorType], **_: Any) -> TensorType:
    return _equal_shapes(in_types, "struct.add")


def _mul_shape(in_types: Sequence[TensorType], **_: Any) -> TensorType:
    return _equal_shapes(in_types, "struct.mul")


def _mean_shape(in_types: Sequence[TensorType], **_: Any) -> TensorType:
    return _equal_shapes(in_types, "struct.mean")


def _concat_shape(in_types: Sequence[TensorType], **_: Any) -> TensorType:
    _float_inputs(in_types, "struct.concat")
    first = in_types[0]
    lead = tuple(first.shape[:-1])
    total = 0
    for i, t in enumerate(in_types):
        if tuple(t.shape[:-1]) != lead:
            raise ShapeError(f"struct.concat needs equal leading dimensions: input 0 is {first}, input {i} is {t}")
        total += t.dim
    return first.with_dim(total)


def _linear_shape(in_types: Sequence[TensorType], *, dim: int, **_: Any) -> TensorType:
    return same_as_input(in_types).with_dim(dim)


def _through(in_types: Sequence[TensorType], **_: Any) -> tuple[PermSpace, ...]:
    """Elementwise blocks: inputs and output share one feature space, with no parameter on it."""
    return (PermSpace(THROUGH_SPACE, in_types[0].dim, ()),)


ADD = BlockSpec(
    name="struct.add",
    role="struct",
    doc="Elementwise sum of two or more inputs of one shape (residual connections).",
    params=(),
    factory=lambda in_types, **_: Add(),
    shape=_add_shape,
    perm_spaces=_through,
    variadic=True,
    pointwise=True,
    reference="Vaswani et al. 2017, Attention Is All You Need (residual x + Sublayer(x))",
)

MUL = BlockSpec(
    name="struct.mul",
    role="struct",
    doc="Elementwise product of two or more inputs of one shape (multiplicative gates).",
    params=(),
    factory=lambda in_types, **_: Mul(),
    shape=_mul_shape,
    perm_spaces=_through,
    variadic=True,
    pointwise=True,
    reference="Dauphin et al. 2017, Language Modeling with Gated Convolutional Networks",
)

MEAN = BlockSpec(
    name="struct.mean",
    role="struct",
    doc="Elementwise mean of two or more inputs of one shape (an ensemble of logits).",
    params=(),
    factory=lambda in_types, **_: Mean(),
    shape=_mean_shape,
    perm_spaces=_through,
    variadic=True,
    pointwise=True,
    reference="model ensembling by averaging logits",
)

CONCAT = BlockSpec(
    name="struct.concat",
    role="struct",
    doc="Concatenate two or more inputs along the feature dimension.",
    params=(),
    factory=lambda in_types, **_: Concat(),
    shape=_concat_shape,
    variadic=True,
    pointwise=True,
    reference="torch.cat along the last dimension",
)

LINEAR = BlockSpec(
    name="struct.linear",
    examples=({"dim": 6}, {"dim": 6, "bias": False}),
    role="struct",
    doc="Affine map of the feature dimension to `dim` (nn.Linear: weight, bias).",
    params=(
        Param("dim", int, doc="output feature dimension", min=1),
        Param("bias", bool, True, "learn an additive bias"),
    ),
    factory=lambda in_types, *, dim, bias: Linear(in_types[0].dim, dim, bias=bias),
    shape=_linear_shape,
    perm_spaces=linear_spaces,
    pointwise=True,
    reference="torch.nn.Linear",
)

DROPOUT = BlockSpec(
    name="struct.dropout",
    role="struct",
    doc="Dropout: zero features with probability p during training, scale the rest by 1/(1-p).",
    params=(Param("p", float, 0.1, "probability of zeroing a feature", min=0.0, max=1.0),),
    factory=lambda in_types, *, p: nn.Dropout(p),
    shape=same_as_input,
    perm_spaces=_through,
    pointwise=True,
    reference="Srivastava et al. 2014, Dropout: A Simple Way to Prevent Neural Networks from Overfitting",
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [ADD, MUL, MEAN, CONCAT, LINEAR, DROPOUT]
