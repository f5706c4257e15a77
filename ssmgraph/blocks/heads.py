"""Output heads.

* ``head.lm``: the language-model head, logits = x Wᵀ (+ b). The module is an
  ``nn.Linear`` whose ``weight`` has shape (vocab, dim), the shape of ``embed.token``'s
  table, so a blueprint can tie the two (Press & Wolf 2017; GPT-2, and nanoGPT, which
  shares ``wte.weight`` with ``lm_head.weight``). ``softcap`` bounds the logits to
  cap · tanh(logits / cap) (Gemma 2's final_logit_softcapping).
* ``head.classify``: pool the sequence (mean over valid tokens, last valid token, or first
  token as BERT's [CLS]) and map it to class logits, as the S4 reference decoders do
  (state-spaces/s4 ``src/tasks/decoders.py`` SequenceDecoder, modes 'pool'/'last'/'first').

Both read their input features on their weight's columns; their outputs (tokens, classes)
keep a fixed order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ssmgraph.ops.linear import Linear
from ssmgraph.ops.softcap import softcap
from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.specs import INPUT_SPACE, BlockSpec, Param, PermAxis, PermSpace, ShapeError, TensorType, same_as_input


class CappedLMHead(Linear):
    """An LM head whose logits are soft-capped: cap · tanh(x Wᵀ / cap)."""

    def __init__(self, dim: int, vocab: int, *, bias: bool, cap: float):
        super().__init__(dim, vocab, bias=bias)
        self.cap = cap

    def forward(self, x: Tensor) -> Tensor:
        return softcap(super().forward(x), self.cap)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, softcap={self.cap}"


def _build_lm(in_types: Sequence[TensorType], *, vocab: int, bias: bool, softcap: float | None) -> nn.Module:
    dim = in_types[0].dim
    return Linear(dim, vocab, bias=bias) if softcap is None else CappedLMHead(dim, vocab, bias=bias, cap=softcap)


class ClassifierHead(nn.Module):
    """Pool (B, L, D) over L, then a Linear ``proj`` to (B, classes)."""

    def __init__(self, dim: int, classes: int, *, pooling: str = "mean", bias: bool = True):
        super().__init__()
        self.pooling = pooling
        self.proj = Linear(dim, classes, bias=bias)

    def pool(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """(..., L, D) -> (..., D); ``mask`` (..., L) bool marks valid tokens (right padding)."""
        if self.pooling == "first":
            return x[..., 0, :]
        if self.pooling == "mean":
            if mask is None:
                return x.mean(dim=-2)
            weights = mask.to(x.dtype).unsqueeze(-1)
            return (x * weights).sum(dim=-2) / weights.sum(dim=-2).clamp(min=1)
        if mask is None:
            return x[..., -1, :]
        last = (mask.sum(dim=-1) - 1).clamp(min=0)
        index = last[..., None, None].expand(*x.shape[:-2], 1, x.shape[-1])
        return torch.gather(x, -2, index).squeeze(-2)

    def forward(self, x: Tensor, *, mask: Tensor | None = None) -> Tensor:
        return self.proj(self.pool(x, mask))

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}"


def _lm_shape(in_types: Sequence[TensorType], *, vocab: int, softcap: float | None = None, **_: Any) -> TensorType:
    if softcap is not None and softcap <= 0:
        raise ShapeError(f"head.lm: softcap must be above 0, got {softcap}")
    return same_as_input(in_types).with_dim(vocab)


def _classify_shape(in_types: Sequence[TensorType], *, classes: int, **_: Any) -> TensorType:
    x = same_as_input(in_types)
    if len(x.shape) < 2:
        raise ShapeError(f"head.classify expects a (batch, seq, dim) sequence to pool, got {x}")
    return TensorType(tuple(x.shape[:-2]) + (classes,), "float")


def _lm_spaces(in_types: Sequence[TensorType], **_: Any) -> tuple[PermSpace, ...]:
    return (PermSpace(INPUT_SPACE, in_types[0].dim, (PermAxis("weight", 1),)),)


def _classify_spaces(in_types: Sequence[TensorType], **_: Any) -> tuple[PermSpace, ...]:
    return (PermSpace(INPUT_SPACE, in_types[0].dim, (PermAxis("proj.weight", 1),)),)


LM = BlockSpec(
    name="head.lm",
    examples=({"vocab": 5}, {"vocab": 5, "softcap": 2.0}),
    role="head",
    doc="Language-model head: logits over `vocab`; `weight` is (vocab, dim), tieable to embed.token.",
    params=(
        Param("vocab", int, doc="number of output tokens", min=1),
        Param("bias", bool, False, "learn a bias per token"),
        Param("softcap", float, None, "cap the logits to cap·tanh(logits/cap) (Gemma 2; null = none)", min=0.0, nullable=True),
    ),
    factory=_build_lm,
    shape=_lm_shape,
    perm_spaces=_lm_spaces,
    pointwise=True,
    reference="Press & Wolf 2017, Using the Output Embedding to Improve Language Models; Gemma Team 2024 (soft-capping)",
)

CLASSIFY = BlockSpec(
    name="head.classify",
    examples=({"classes": 3}, {"classes": 3, "pooling": "last"}),
    role="head",
    doc="Sequence classifier: pool over the sequence (mean, last or first token), then Linear to classes.",
    params=(
        Param("classes", int, doc="number of classes", min=1),
        Param(
            "pooling", str, "mean", "how to reduce the sequence (mask-aware for mean and last)", choices=("mean", "last", "first")
        ),
        Param("bias", bool, True, "learn a bias per class"),
    ),
    factory=lambda in_types, *, classes, pooling, bias: ClassifierHead(in_types[0].dim, classes, pooling=pooling, bias=bias),
    shape=_classify_shape,
    perm_spaces=_classify_spaces,
    causal=lambda a: a["pooling"] == "last",
    bidirectional=lambda a: a["pooling"] != "last",
    reference="Gu et al. 2022, S4 (state-spaces/s4 SequenceDecoder pooling); Devlin et al. 2019, BERT ([CLS])",
)


@hookimpl
def ssmgraph_blocks() -> list[BlockSpec]:
    return [LM, CLASSIFY]
