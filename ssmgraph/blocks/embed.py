"""Input embeddings: token ids or continuous features to B×L×D, and positional embeddings.

* ``embed.token``: a lookup table (nn.Embedding semantics) whose ``weight`` has shape
  (vocab, dim), so a blueprint can tie an LM head (``head.lm``) to it (Press & Wolf 2017).
  Initialised N(0, 0.02²) as GPT-2 and state-spaces/mamba (``_init_weights``) do.
* ``embed.linear``: a linear projection of continuous features (e.g. pixels of sequential
  MNIST, as the S4 reference encoders do).
* ``embed.position``: learned absolute positions (GPT-2's ``wpe``) or the fixed
  sinusoids of Vaswani et al. 2017, §3.5:
  PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).
  The output is the positional embedding alone; a ``struct.add`` node adds it to the token
  embedding. It carries a state (the next position, int64 of shape (B,)), so chunked
  processing and recurrent ``step`` continue counting positions.

Feature spaces (for permutation alignment): the output features are the columns of the
token and learned position tables, the rows (and bias) of ``embed.linear``, whose input
features are its columns. A sinusoidal table is a fixed function of the position, so its
output's feature order is fixed. ``embed.position`` reads its input only for its shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ssmgraph.ops.linear import Linear
from ssmgraph.ops.precision import compute_dtype
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import (
    INPUT_SPACE,
    OUTPUT_SPACE,
    BlockSpec,
    Param,
    PermAxis,
    PermSpace,
    ShapeError,
    TensorType,
    rows_of,
    same_as_input,
)

EMBED_INIT_STD = 0.02


class TokenEmbedding(nn.Module):
    """Lookup of token ids (any integer dtype, any shape) in a (vocab, dim) table."""

    def __init__(self, vocab: int, dim: int, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(vocab, dim))
        nn.init.normal_(self.weight, std=EMBED_INIT_STD)

    def forward(self, ids: Tensor) -> Tensor:
        out = F.embedding(ids, self.weight)
        # Gemma multiplies by the scale rounded to the weight's dtype (GemmaTextScaledWordEmbedding)
        return out if self.scale == 1.0 else out * torch.tensor(self.scale, dtype=self.weight.dtype, device=out.device)

    def extra_repr(self) -> str:
        extra = f", scale={self.scale}" if self.scale != 1.0 else ""
        return f"vocab={self.weight.shape[0]}, dim={self.weight.shape[1]}{extra}"


def sinusoidal(positions: Tensor, dim: int, dtype: torch.dtype) -> Tensor:
    """Vaswani et al.'s table at ``positions`` (any shape): even features sin, odd features cos.

    Angles are computed in at least fp32 and the result is cast to ``dtype``; an odd ``dim``
    keeps the last sine feature.
    """
    compute = compute_dtype(dtype)
    i = torch.arange((dim + 1) // 2, device=positions.device, dtype=compute)
    inv_freq = torch.exp(i * (-2.0 * math.log(10000.0) / dim))
    angle = positions.to(compute).unsqueeze(-1) * inv_freq
    table = torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(-2)
    return table[..., :dim].to(dtype)


class PositionEmbedding(nn.Module):
    """Absolute position embedding of the positions of a (B, L) or (B, L, F) input.

    State: the position of the next token, an int64 tensor of shape (B,). With a right-padding
    ``mask`` the final state counts valid tokens only.
    """

    def __init__(self, max_len: int, dim: int, kind: str):
        super().__init__()
        self.max_len, self.dim, self.kind = max_len, dim, kind
        if kind == "learned":
            self.weight = nn.Parameter(torch.empty(max_len, dim))
            nn.init.normal_(self.weight, std=EMBED_INIT_STD)
        else:  # follows .to(dtype): the sinusoids of token-id inputs take the module's dtype
            self.register_buffer("dtype_marker", torch.empty(0), persistent=False)

    def _embed(self, positions: Tensor, x: Tensor) -> Tensor:
        if self.kind == "learned":
            return F.embedding(positions, self.weight)
        dtype = x.dtype if x.is_floating_point() else self.dtype_marker.dtype
        return sinusoidal(positions, self.dim, dtype)

    def forward(
        self,
        x: Tensor,
        *,
        state: Tensor | None = None,
        return_state: bool = False,
        mask: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        batch, length = x.shape[0], x.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence of length {length} exceeds max_len {self.max_len}")
        if state is None:
            state = self.init_state(batch, device=x.device)
        elif length:
            self._check_reach(state + (length - 1))
        positions = state.unsqueeze(1) + torch.arange(length, device=x.device)
        out = self._embed(positions, x)
        if not return_state:
            return out
        advance = length if mask is None else mask.sum(dim=1)
        return out, state + advance

    def init_state(self, batch: int, *, device: torch.device | None = None, dtype: Any = None) -> Tensor:
        """Position 0 for every sequence; ``dtype`` is ignored (positions are int64)."""
        if device is None and self.kind == "learned":
            device = self.weight.device
        return torch.zeros(batch, dtype=torch.long, device=device)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """``x_t``: (B,) token ids or (B, F) features; returns ((B, dim), next position)."""
        if state.device.type == "cpu":  # per token: on a GPU the check would sync every step
            self._check_reach(state)
        return self._embed(state, x_t), state + 1

    def _check_reach(self, last: Tensor) -> None:
        """Learned positions end at ``max_len - 1``: a clear error, not an IndexError from inside
        ``F.embedding`` (sinusoids have no end)."""
        if self.kind == "learned" and last.numel() and int(last.max()) >= self.max_len:
            raise ValueError(
                f"position {int(last.max())} is past the learned position embedding's max_len {self.max_len}; "
                "generate fewer tokens, or use a model built with a larger max_len"
            )

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, dim={self.dim}, kind={self.kind!r}"


def _token_shape(in_types: Sequence[TensorType], *, dim: int, **_: Any) -> TensorType:
    (x,) = in_types
    if x.dtype != "int":
        raise ShapeError(f"embed.token expects integer token ids, got {x}")
    return TensorType(tuple(x.shape) + (dim,), "float")


def _linear_shape(in_types: Sequence[TensorType], *, dim: int, **_: Any) -> TensorType:
    return same_as_input(in_types).with_dim(dim)


def _position_shape(in_types: Sequence[TensorType], *, max_len: int, dim: int, **_: Any) -> TensorType:
    (x,) = in_types
    want = 2 if x.dtype == "int" else 3
    if len(x.shape) != want:
        layout = "(batch, seq) token ids" if x.dtype == "int" else "(batch, seq, features)"
        raise ShapeError(f"embed.position expects {layout}, got {x}")
    seq = x.shape[1]
    if isinstance(seq, int) and seq > max_len:
        raise ShapeError(f"sequence length {seq} exceeds max_len {max_len}")
    return TensorType((x.shape[0], seq, dim), "float")


def _token_spaces(in_types: Sequence[TensorType], *, dim: int, **_: Any) -> tuple[PermSpace, ...]:
    return (PermSpace(OUTPUT_SPACE, dim, (PermAxis("weight", 1),)),)


def linear_spaces(in_types: Sequence[TensorType], *, dim: int, bias: bool, **_: Any) -> tuple[PermSpace, ...]:
    """``nn.Linear`` from the input features to ``dim`` (also struct.linear and stitch.linear)."""
    rows = rows_of("", bias)
    return (PermSpace(INPUT_SPACE, in_types[0].dim, (PermAxis("weight", 1),)), PermSpace(OUTPUT_SPACE, dim, rows))


def _position_spaces(in_types: Sequence[TensorType], *, dim: int, kind: str, **_: Any) -> tuple[PermSpace, ...]:
    (x,) = in_types
    spaces = [PermSpace(INPUT_SPACE, x.dim, ())] if x.dtype == "float" else []  # only the shape is read
    if kind == "learned":
        spaces.append(PermSpace(OUTPUT_SPACE, dim, (PermAxis("weight", 1),)))
    return tuple(spaces)


TOKEN = BlockSpec(
    name="embed.token",
    examples=({"vocab": 5, "dim": 8},),
    role="embed",
    doc="Token-id lookup table: int ids (...) -> float (..., dim); `weight` is (vocab, dim).",
    params=(
        Param("vocab", int, doc="number of token ids (table rows)", min=1),
        Param("dim", int, doc="embedding dimension", min=1),
        Param("scale", float, 1.0, "multiplies the looked-up rows (Gemma: sqrt(dim)); the tied head reads the unscaled table"),
    ),
    factory=lambda in_types, *, vocab, dim, scale: TokenEmbedding(vocab, dim, scale),
    shape=_token_shape,
    perm_spaces=_token_spaces,
    pointwise=True,
    reference="Press & Wolf 2017, Using the Output Embedding to Improve Language Models",
)

LINEAR = BlockSpec(
    name="embed.linear",
    examples=({"dim": 6},),
    role="embed",
    doc="Linear embedding of continuous features: B×L×F -> B×L×dim.",
    params=(
        Param("dim", int, doc="embedding dimension", min=1),
        Param("bias", bool, True, "learn an additive bias"),
    ),
    factory=lambda in_types, *, dim, bias: Linear(in_types[0].dim, dim, bias=bias),
    shape=_linear_shape,
    perm_spaces=linear_spaces,
    pointwise=True,
    reference="Gu et al. 2022, Efficiently Modeling Long Sequences with Structured State Spaces (linear encoder)",
)

POSITION = BlockSpec(
    name="embed.position",
    examples=({"max_len": 16, "dim": 8},),
    role="embed",
    doc="Absolute position embedding (learned or sinusoidal) of a sequence, to be added to its embedding.",
    params=(
        Param("max_len", int, doc="largest sequence length (rows of the learned table)", min=1),
        Param("dim", int, doc="embedding dimension", min=1),
        Param("kind", str, "learned", "learned table (GPT-2) or fixed sinusoids (Vaswani)", choices=("learned", "sinusoidal")),
    ),
    factory=lambda in_types, *, max_len, dim, kind: PositionEmbedding(max_len, dim, kind),
    shape=_position_shape,
    perm_spaces=_position_spaces,
    step=True,
    reference="Vaswani et al. 2017, Attention Is All You Need, §3.5; Radford et al. 2019 (GPT-2, learned)",
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [TOKEN, LINEAR, POSITION]
