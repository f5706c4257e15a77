"""Normalisation blocks.

* ``norm.layer``: LayerNorm (Ba, Kiros & Hinton 2016), torch's ``nn.LayerNorm`` (fused
  ``F.layer_norm``; autocast runs it in fp32); ``bias: false`` is nanoGPT's
  ``LayerNorm(bias=False)``.
* ``norm.rms``: RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x²) + eps) · weight, computed
  in (at least) fp32 and cast back to the input dtype before the weight, as Llama's
  ``RMSNorm`` does (``self._norm(x.float()).type_as(x) * self.weight``). Uses the fused
  ``F.rms_norm`` (torch >= 2.4) when present. ``offset: 1`` is Gemma's ``x̂ · (1 + weight)``,
  multiplied in fp32 and then cast.

Both normalise over the features with statistics that do not depend on their order, so a
norm's input and output share one feature space (``<through>``) carried by its weight and
bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ssmgraph.ops.precision import compute_dtype
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import THROUGH_SPACE, BlockSpec, Param, PermSpace, TensorType, rows_of, same_as_input


def _rms_norm(x: Tensor, dim: int, eps: float) -> Tensor:
    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, (dim,), eps=eps)
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · weight over the last dimension."""

    def __init__(self, dim: int, eps: float = 1e-6, offset: float = 0.0):
        super().__init__()
        self.dim, self.eps, self.offset = dim, eps, offset
        self.weight = nn.Parameter(torch.full((dim,), 1.0 - offset))

    def forward(self, x: Tensor) -> Tensor:
        compute = compute_dtype(x.dtype)
        normed = _rms_norm(x.to(compute), self.dim, self.eps)
        if self.offset:  # Gemma: (x̂ · (offset + weight)) in fp32, then cast
            return (normed * (self.offset + self.weight.to(compute))).to(x.dtype)
        return normed.to(x.dtype) * self.weight

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}" + (f", offset={self.offset}" if self.offset else "")


def _build_layer(in_types: Sequence[TensorType], *, eps: float, bias: bool) -> nn.LayerNorm:
    return nn.LayerNorm(in_types[0].dim, eps=eps, bias=bias)


def _build_rms(in_types: Sequence[TensorType], *, eps: float, offset: float) -> RMSNorm:
    return RMSNorm(in_types[0].dim, eps=eps, offset=offset)


def _layer_spaces(in_types: Sequence[TensorType], *, bias: bool, **_: Any) -> tuple[PermSpace, ...]:
    return (PermSpace(THROUGH_SPACE, in_types[0].dim, rows_of("", bias)),)


def _rms_spaces(in_types: Sequence[TensorType], **_: Any) -> tuple[PermSpace, ...]:
    return (PermSpace(THROUGH_SPACE, in_types[0].dim, rows_of("", bias=False)),)


LAYER = BlockSpec(
    name="norm.layer",
    role="norm",
    doc="LayerNorm over the feature dimension (weight, optional bias).",
    params=(
        Param("eps", float, 1e-5, "added to the variance for numerical stability", min=0.0),
        Param("bias", bool, True, "learn an additive bias"),
    ),
    factory=_build_layer,
    shape=same_as_input,
    perm_spaces=_layer_spaces,
    pointwise=True,
    reference="Ba, Kiros & Hinton 2016, Layer Normalization",
)

RMS = BlockSpec(
    name="norm.rms",
    role="norm",
    doc="RMSNorm: x / sqrt(mean(x^2) + eps) * weight, computed in fp32.",
    params=(
        Param("eps", float, 1e-6, "added to the mean square for numerical stability", min=0.0),
        Param(
            "offset",
            float,
            0.0,
            "added to the weight: 1 = Gemma's x̂·(1 + weight), multiplied in fp32 before the cast (weight starts at 0)",
        ),
    ),
    factory=_build_rms,
    shape=same_as_input,
    perm_spaces=_rms_spaces,
    pointwise=True,
    reference="Zhang & Sennrich 2019, Root Mean Square Layer Normalization; Touvron et al. 2023, LLaMA",
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [LAYER, RMS]
