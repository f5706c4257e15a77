"""``stitch.blend`` and ``stitch.autoencoder``: the blocks of a superposed model.

``stitch.blend`` computes (1 − α)·a + α·b of two models' hidden states.

α is one scalar ("1D") or one value per feature ("2D", a vector of the input width), kept
in [0, 1] by clamping. The superposition merge learns α through a B-spline over depth
(``ssmgraph.merge.superpose``) and stores each layer's value here, so a merged model is a
plain blueprint. Pointwise (and so causal): position t reads only position t of a and b.

``stitch.autoencoder`` maps a blended state back to a hidden state through a bottleneck:
``linear`` is pointwise (down, GELU, up, plus a skip connection), ``causal_conv`` mixes the
last ``kernel`` positions with a convolution padded on the left only. The published
superposition code pads its convolutions on both sides, so position t reads t + 1: its
language model can peek at the next token. Here no output reads a later input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import BlockSpec, Param, ShapeError, TensorType


class Blend(nn.Module):
    def __init__(self, dim: int, per_feature: bool, init: float):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((dim,) if per_feature else (), init))

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        alpha = self.alpha.clamp(0.0, 1.0)
        return a + alpha * (b - a)


class AutoEncoder(nn.Module):
    """x + up(GELU(down(x))), with ``down`` pointwise or a causal convolution over time.

    ``up`` starts near zero, so the autoencoder starts close to the identity on the blend."""

    def __init__(self, dim: int, kind: str, bottleneck: float, kernel: int):
        super().__init__()
        inner = max(1, round(dim * bottleneck))
        self.kind, self.kernel = kind, kernel
        self.down = nn.Linear(dim, inner) if kind == "linear" else nn.Conv1d(dim, inner, kernel)
        self.up = nn.Linear(inner, dim)
        nn.init.normal_(self.up.weight, std=1e-3)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "linear":
            z = self.down(x)
        else:  # left padding only: output t reads inputs t - kernel + 1 .. t
            z = self.down(F.pad(x.transpose(1, 2), (self.kernel - 1, 0))).transpose(1, 2)
        return x + self.up(F.gelu(z))


def _ae_shape(in_types: Sequence[TensorType], **_: Any) -> TensorType:
    (x,) = in_types
    if x.dtype != "float":
        raise ShapeError(f"stitch.autoencoder reads float features, got {x}")
    x.dim  # noqa: B018 - a symbolic width raises ShapeError
    return x


AUTOENCODER = BlockSpec(
    name="stitch.autoencoder",
    role="stitch",
    doc="Residual bottleneck autoencoder on hidden states, pointwise or a causal (left-padded) convolution.",
    params=(
        Param("kind", str, "linear", "pointwise 'linear', or 'causal_conv' over the last `kernel` positions", choices=("linear", "causal_conv")),
        Param("bottleneck", float, 1.0, "inner width as a fraction of the input width", min=0.01, max=8.0),
        Param("kernel", int, 3, "positions a causal_conv autoencoder reads (the current one and kernel − 1 before it)", min=1),
    ),
    factory=lambda in_types, *, kind, bottleneck, kernel: AutoEncoder(in_types[0].dim, kind, bottleneck, kernel),
    shape=_ae_shape,
    causal=True,
    pointwise=lambda a: a["kind"] == "linear" or a["kernel"] == 1,
    reference="seed 002 (autoencoders on hidden states), made causal",
    examples=({}, {"kind": "causal_conv", "kernel": 3, "bottleneck": 0.5}),
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
    inputs=("a", "b"),
    pointwise=True,
    reference="Ben Chaliah & Dellagi 2025, Superposition in Transformers (arXiv 2501.00530)",
    examples=({}, {"per_feature": True, "init": 0.3}),
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [BLEND, AUTOENCODER]
