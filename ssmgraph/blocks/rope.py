"""Rotary position embedding (Su et al. 2021) for ``mix.attention``: the table and its scalings.

Half-split convention (GPT-NeoX, Hugging Face Llama's ``rotate_half``): feature i rotates with
feature i + d/2 by the angle pos · f_i, where f_i = base^(-2i/d) for i < d/2. The context-length
scalings change the inverse frequencies f_i (and, for YaRN, the magnitude of cos and sin), as
transformers' ``modeling_rope_utils.py`` computes them:

* ``linear`` (position interpolation, Chen et al. 2023): f_i / factor.
* ``llama3`` (Llama 3.1): wavelengths 2π/f_i longer than original_len / low_freq are divided by
  factor, those shorter than original_len / high_freq kept, the ones between blended smoothly.
* ``yarn`` (Peng et al. 2023): f_i blended between f_i and f_i / factor by a linear ramp over the
  dimensions whose number of rotations within original_len lies between beta_slow and beta_fast;
  cos and sin are multiplied by the attention factor (default 0.1·ln(factor) + 1).

The frequencies are computed once at build, in fp64 on the host; the module keeps them as a
non-persistent buffer (nothing in the state dict) in at least fp32, so a model cast to bf16
still rotates with fp32 angles, and a model cast to fp64 with exact ones.

Partial rotation (``rope_dims``, GPT-NeoX's ``rotary_pct``): only the first ``rope_dims`` features
of each head rotate, in the same half-split convention within them (feature i with i + rope_dims/2,
f_i = base^(-2i/rope_dims)); the others pass through unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ssmgraph.ops.precision import compute_dtype, host_init
from ssmgraph.registry.specs import Param, ShapeError

SCALINGS = ("none", "linear", "llama3", "yarn")

ROPE_PARAMS = (
    Param("rope", bool, False, "rotary position embedding on queries and keys"),
    Param("rope_base", float, 10000.0, "RoPE base of the rotation frequencies", min=1.0),
    Param(
        "rope_dims",
        int,
        None,
        "features of each head that rotate, the first ones (null = all; GPT-NeoX's rotary_pct · head_dim); even",
        min=2,
        nullable=True,
    ),
    Param(
        "rope_scaling",
        str,
        "none",
        "context-length scaling of the RoPE frequencies (transformers' rope_type): none, linear, llama3 or yarn",
        choices=SCALINGS,
    ),
    Param("rope_factor", float, 1.0, "scaling factor: how many times the original context is stretched", min=1.0),
    Param(
        "rope_original_len",
        int,
        None,
        "context length of pre-training (original_max_position_embeddings); needed by llama3 and yarn",
        min=1,
        nullable=True,
    ),
    Param("rope_low_freq", float, 1.0, "llama3: wavelengths above original_len / rope_low_freq are divided by factor", min=0.0),
    Param("rope_high_freq", float, 4.0, "llama3: wavelengths below original_len / rope_high_freq are kept", min=0.0),
    Param("rope_beta_fast", float, 32.0, "yarn: rotations within original_len above which a frequency is kept", min=0.0),
    Param("rope_beta_slow", float, 1.0, "yarn: rotations within original_len below which a frequency is divided by factor"),
    Param("rope_truncate", bool, True, "yarn: round the ramp's ends to whole dimensions (floor, ceil)"),
    Param(
        "rope_attention_factor",
        float,
        None,
        "yarn: multiplier of cos and sin (null = 0.1·ln(factor) + 1)",
        min=0.0,
        nullable=True,
    ),
)
"""mix.attention's RoPE parameters; ``rope_*`` arguments other than ``rope`` matter only with ``rope: true``."""


def check_rope_args(head_dim: int, args: dict[str, Any]) -> None:
    """The shape rule's part for RoPE: an even head dimension, the lengths a scaling needs."""
    if not args["rope"]:
        return
    if head_dim % 2:
        raise ShapeError(f"mix.attention: rope needs an even head dimension, got {head_dim}")
    dims = args.get("rope_dims")
    if dims is not None and (dims % 2 or dims > head_dim):
        raise ShapeError(f"mix.attention: rope_dims must be even and at most the head dimension {head_dim}, got {dims}")
    scaling = args["rope_scaling"]
    if scaling in ("llama3", "yarn") and args["rope_original_len"] is None:
        raise ShapeError(f"mix.attention: rope_scaling {scaling} needs rope_original_len (the pre-training context)")
    if scaling == "llama3" and not 0 < args["rope_low_freq"] < args["rope_high_freq"]:
        raise ShapeError(
            f"mix.attention: llama3 needs 0 < rope_low_freq < rope_high_freq, got {args['rope_low_freq']} and "
            f"{args['rope_high_freq']}"
        )


def plain_inv_freq(head_dim: int, base: float) -> Tensor:
    """base^(-2i/d) for i < d/2, fp64 on the host."""
    return base ** (
        -torch.arange(
            0,
            head_dim,
            2,
            dtype=torch.float64,
        )
        / head_dim
    )


def _linear(f: Tensor, factor: float, **_: Any) -> Tensor:
    return f / factor


def _llama3(f: Tensor, factor: float, original_len: int, low_freq: float, high_freq: float, **_: Any) -> Tensor:
    wavelen = 2 * math.pi / f
    scaled = torch.where(wavelen > original_len / low_freq, f / factor, f)
    smooth = (original_len / wavelen - low_freq) / (high_freq - low_freq)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= original_len / high_freq) & (wavelen <= original_len / low_freq)
    return torch.where(medium, smoothed, scaled)


def _yarn(
    f: Tensor, factor: float, original_len: int, beta_fast: float, beta_slow: float, truncate: bool, base: float, **_: Any
) -> Tensor:
    dim = 2 * f.numel()

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    return f / factor * ramp + f * (1 - ramp)


_SCALED: dict[str, Callable[..., Tensor]] = {"linear": _linear, "llama3": _llama3, "yarn": _yarn}


def yarn_attention_factor(factor: float) -> float:
    """YaRN's default magnitude of cos and sin: 0.1·ln(factor) + 1 (1 for factor ≤ 1)."""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


class Rotary(nn.Module):
    """The rotation table of one attention block: inverse frequencies and the cos/sin magnitude."""

    inv_freq: Tensor

    def __init__(
        self,
        head_dim: int,
        base: float,
        *,
        scaling: str = "none",
        factor: float = 1.0,
        original_len: int | None = None,
        low_freq: float = 1.0,
        high_freq: float = 4.0,
        beta_fast: float = 32.0,
        beta_slow: float = 1.0,
        truncate: bool = True,
        attention_factor: float | None = None,
        dims: int | None = None,
    ):
        """``dims``: the features of each head that rotate (null: all ``head_dim``)."""
        super().__init__()
        self.scaling = scaling
        with host_init() as ambient:  # exact values on the host, even under torch.device("meta")
            exact = plain_inv_freq(head_dim if dims is None else dims, base)
            if scaling != "none":
                exact = _SCALED[scaling](
                    exact,
                    factor=factor,
                    original_len=original_len,
                    low_freq=low_freq,
                    high_freq=high_freq,
                    beta_fast=beta_fast,
                    beta_slow=beta_slow,
                    truncate=truncate,
                    base=base,
                )
        self._exact = exact  # a plain attribute: not moved or cast by .to(), the source of the buffer
        self.magnitude = (
            (yarn_attention_factor(factor) if attention_factor is None else attention_factor) if scaling == "yarn" else 1.0
        )
        table = exact.to(compute_dtype(torch.get_default_dtype()))
        self.register_buffer("inv_freq", table.to(ambient), persistent=False)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Rotary:
        """After a move or cast, refill the table from the exact values, in at least fp32."""
        super()._apply(fn, recurse)
        moved = self.inv_freq
        self.inv_freq = self._exact.to(compute_dtype(moved.dtype)).to(moved.device)
        return self

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and sin (..., d/2) of the angles at ``positions``, in at least fp32 (``dtype`` promoted)."""
        return angles(positions, self.inv_freq, dtype, self.magnitude)

    def extra_repr(self) -> str:
        return f"scaling={self.scaling!r}, magnitude={self.magnitude:g}"


def angles(positions: Tensor, inv_freq: Tensor, dtype: torch.dtype, magnitude: float = 1.0) -> tuple[Tensor, Tensor]:
    """magnitude · (cos, sin) of positions · inv_freq, computed in ``dtype`` promoted to at least fp32."""
    compute = compute_dtype(dtype)
    angle = positions.to(compute).unsqueeze(-1) * inv_freq.to(device=positions.device, dtype=compute)
    cos, sin = angle.cos(), angle.sin()
    if magnitude != 1.0:
        cos, sin = cos * magnitude, sin * magnitude
    return cos, sin


def rope_angles(positions: Tensor, head_dim: int, base: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and sin of pos · base^(-2i/head_dim), i < head_dim/2 (plain RoPE), in at least fp32."""
    return angles(positions, plain_inv_freq(head_dim, base), dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x_i, x_{i+r/2}) of ``x`` (..., L, d) by the angles behind cos/sin (..., L, r/2); the
    features from r on (partial rotation, r < d) pass through."""
    half = cos.shape[-1]
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    parts = (x1 * cos - x2 * sin, x2 * cos + x1 * sin)
    rotated = torch.cat(parts if 2 * half == x.shape[-1] else (*parts, x[..., 2 * half :]), dim=-1)
    return rotated.to(x.dtype)
