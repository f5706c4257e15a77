"""Logit soft-capping (Gemma 2): ``cap · tanh(x / cap)``, and attention whose scores are capped.

Soft-capping bounds attention scores and LM logits smoothly to (−cap, cap); Gemma 2 caps the
attention scores at 50 and the final logits at 30 (Gemma Team 2024). The fused SDPA kernels
cannot apply it between the product and the softmax, so capped attention runs the plain
product, the cap, the mask and a softmax in (at least) fp32 (transformers' eager Gemma 2 attention).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from ssmgraph.ops.precision import compute_dtype


def softcap(x: Tensor, cap: float) -> Tensor:
    """cap · tanh(x / cap), in the order transformers computes it (divide, tanh, multiply)."""
    return torch.tanh(x / cap) * cap


def capped_attention(
    q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, *, cap: float, scale: float | None = None, dropout: float = 0.0
) -> Tensor:
    """softmax(cap · tanh(scale · q kᵀ / cap), masked to ``allowed``) v for (B, H, L, d) q and (B, H, S, d) k, v;
    ``allowed`` broadcasts to (B, H, L, S); ``scale`` null: 1 / sqrt(d). Every row must allow a key."""
    scores = softcap(torch.matmul(q, k.transpose(-2, -1)) * (q.shape[-1] ** -0.5 if scale is None else scale), cap)
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = F.softmax(scores, dim=-1, dtype=compute_dtype(q.dtype)).to(q.dtype)
    if dropout:
        weights = F.dropout(weights, p=dropout)
    return torch.matmul(weights, v)
