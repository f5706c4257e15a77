"""``stitch.blend`` and ``stitch.autoencoder``: the blocks of a superposed model.

``stitch.blend`` computes (1 − α)·a + α·b of two models' hidden states.

α is one scalar ("1D") or one value per feature ("2D", a vector of the input width), kept
in [0, 1] by clamping. The superposition merge learns α through a B-spline over depth
(``ssmgraph.merge.superpose``) and stores each layer's value here, so a merged model is a
plain blueprint. Pointwise (and so causal): position t reads only position t of a and b.

``stitch.autoencoder`` maps a blended state back to a hidden state through a bottleneck:
``linear`` is pointwise, ``causal_conv`` encodes the last ``kernel`` positions with a
convolution padded on the left only (its decoder is pointwise); ``residual`` adds the input
back, the decoder starting near zero so the block starts near the identity. The published
superposition code pads its convolutions on both sides, so position t reads t + 1: its
language model can peek at the next token. Here no output reads a later input.

Feature spaces: a blend's inputs and output share one (``<through>``, with α when it is per
feature); so do a residual autoencoder's (the encoder's input columns, the decoder's rows
and bias); without ``residual`` its input and output spaces are separate. Permutation space
``inner``: the bottleneck units (encoder rows and bias, decoder columns).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmgraph.ops.linear import Linear
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import (
    INPUT_SPACE,
    OUTPUT_SPACE,
    THROUGH_SPACE,
    BlockSpec,
    Param,
    PermAxis,
    PermSpace,
    ShapeError,
    TensorType,
)


class Blend(nn.Module):
    def __init__(self, dim: int, per_feature: bool, init: float):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((dim,) if per_feature else (), init))

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        alpha = self.alpha.clamp(0.0, 1.0)
        return a + alpha * (b - a)


KINDS = ("linear", "causal_conv")
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "identity": nn.Identity}


class CausalAutoencoder(nn.Module):
    """A bottleneck autoencoder over B×L×D hidden states that never reads later positions.

    ``bottleneck`` is the inner width as a fraction of D (rounded up, at least 1); ``kernel`` is
    the number of positions a ``causal_conv`` encoder reads (the current one and kernel − 1
    before it); ``activation`` sits between encoder and decoder (``identity`` makes the whole
    autoencoder linear)."""

    def __init__(
        self,
        dim: int,
        kind: str = "linear",
        bottleneck: float = 0.75,
        kernel: int = 3,
        residual: bool = False,
        activation: str = "gelu",
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"autoencoder kind must be one of {KINDS}, got {kind!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        if kernel < 1 or bottleneck <= 0:
            raise ValueError(f"kernel must be ≥ 1 and bottleneck > 0, got {kernel} and {bottleneck}")
        self.dim, self.kind, self.kernel, self.residual = dim, kind, kernel, residual
        self.inner = max(1, math.ceil(dim * bottleneck - 1e-9))
        self.encoder: nn.Module = Linear(dim, self.inner) if kind == "linear" else nn.Conv1d(dim, self.inner, kernel)
        self.activation = ACTIVATIONS[activation]()
        self.decoder = Linear(self.inner, dim)
        if residual:  # start near the identity; not at it, so the encoder gets gradients from step one
            nn.init.normal_(self.decoder.weight, std=1e-3)
            nn.init.zeros_(self.decoder.bias)

    def encode(self, x: Tensor) -> Tensor:
        """B×L×D → B×L×inner (before the activation)."""
        if self.kind == "linear":
            return self.encoder(x)
        # Conv1d reads B×D×L; pad (kernel − 1) positions on the left of time, none on the right.
        return self.encoder(F.pad(x.transpose(1, 2), (self.kernel - 1, 0))).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"expected B×L×{self.dim} hidden states, got shape {tuple(x.shape)}")
        out = self.decoder(self.activation(self.encode(x)))
        return x + out if self.residual else out


def _ae_shape(in_types: Sequence[TensorType], **_: Any) -> TensorType:
    (x,) = in_types
    if x.dtype != "float":
        raise ShapeError(f"stitch.autoencoder reads float features, got {x}")
    x.dim  # noqa: B018 - a symbolic width raises ShapeError
    return x


def _ae_spaces(in_types: Sequence[TensorType], *, bottleneck: float, residual: bool, **_: Any) -> tuple[PermSpace, ...]:
    dim = in_types[0].dim
    inner = max(1, math.ceil(dim * bottleneck - 1e-9))  # as CausalAutoencoder
    reads = (PermAxis("encoder.weight", 1),)  # Linear (inner, dim) or Conv1d (inner, dim, kernel)
    writes = (PermAxis("decoder.weight", 0), PermAxis("decoder.bias", 0))
    units = (PermAxis("encoder.weight", 0), PermAxis("encoder.bias", 0), PermAxis("decoder.weight", 1))
    io = (
        (PermSpace(THROUGH_SPACE, dim, reads + writes),)
        if residual
        else (PermSpace(INPUT_SPACE, dim, reads), PermSpace(OUTPUT_SPACE, dim, writes))
    )
    return (PermSpace("inner", inner, units, "bottleneck units"), *io)


def _blend_spaces(in_types: Sequence[TensorType], *, per_feature: bool, **_: Any) -> tuple[PermSpace, ...]:
    return (PermSpace(THROUGH_SPACE, in_types[0].dim, (PermAxis("alpha", 0),) if per_feature else ()),)


AUTOENCODER = BlockSpec(
    name="stitch.autoencoder",
    role="stitch",
    doc="Bottleneck autoencoder on hidden states, pointwise or a causal (left-padded) convolution.",
    params=(
        Param("kind", str, "linear", "pointwise 'linear', or 'causal_conv' over the last `kernel` positions", choices=KINDS),
        Param("bottleneck", float, 1.0, "inner width as a fraction of the input width", min=0.01, max=8.0),
        Param("kernel", int, 3, "positions a causal_conv encoder reads (the current one and kernel − 1 before it)", min=1),
        Param("residual", bool, True, "add the input back (x + decoder(...)), starting near the identity"),
        Param(
            "activation",
            str,
            "gelu",
            "between encoder and decoder ('identity': a linear autoencoder)",
            choices=tuple(ACTIVATIONS),
        ),
    ),
    factory=lambda in_types, **args: CausalAutoencoder(in_types[0].dim, **args),
    shape=_ae_shape,
    perm_spaces=_ae_spaces,
    causal=True,
    pointwise=lambda a: a["kind"] == "linear" or a["kernel"] == 1,
    reference="Ben Chaliah & Dellagi 2025, Superposition in Transformers (arXiv 2501.00530): autoencoders on hidden states, made causal",
    examples=({}, {"kind": "causal_conv", "kernel": 3, "bottleneck": 0.5}, {"residual": False, "activation": "identity"}),
)


def _shape(in_types: Sequence[TensorType], **_: Any) -> TensorType:
    if len(in_types) != 2:
        raise ShapeError(f"stitch.blend blends exactly two inputs, got {len(in_types)}")
    a, b = in_types
    if a.dtype != "float" or b.dtype != "float":
        raise ShapeError(f"stitch.blend blends float features, got {a} and {b}")
    if a.dim != b.dim:
        raise ShapeError(f"stitch.blend needs inputs of one width, got {a} and {b} (stitch one side first)")
    return a


BLEND = BlockSpec(
    name="stitch.blend",
    role="stitch",
    doc="Blend two models' hidden states: (1 − α)·a + α·b with α in [0, 1], one per layer or per feature.",
    params=(
        Param("per_feature", bool, False, "one α per feature ('2D') instead of one scalar ('1D')"),
        Param("init", float, 0.5, "initial α (0: all a, 1: all b)", min=0.0, max=1.0),
    ),
    factory=lambda in_types, *, per_feature, init: Blend(in_types[0].dim, per_feature, init),
    shape=_shape,
    perm_spaces=_blend_spaces,
    inputs=("a", "b"),
    pointwise=True,
    reference="Ben Chaliah & Dellagi 2025, Superposition in Transformers (arXiv 2501.00530)",
    examples=({}, {"per_feature": True, "init": 0.3}),
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [BLEND, AUTOENCODER]
