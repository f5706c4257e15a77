"""Pieces the mLSTM and sLSTM blocks share, after the official xlstm package (NX-AI/xlstm,
``xlstm/components``): the block-diagonal (headwise) linear layer, the per-head layer norm
with a residual weight and the init rules."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def small_init_(weight: Tensor, dim: int) -> Tensor:
    """N(0, 2 / (5 dim)) (Nguyen & Salazar 2019; xlstm's ``small_init_init_``)."""
    return nn.init.normal_(weight, mean=0.0, std=math.sqrt(2 / (5 * dim)))


def wang_init_(weight: Tensor, dim: int, num_blocks: int = 1) -> Tensor:
    """N(0, (2 / num_blocks / √dim)²) (xlstm's ``wang_init_`` for output projections)."""
    return nn.init.normal_(weight, mean=0.0, std=2 / num_blocks / math.sqrt(dim))


class HeadwiseLinear(nn.Module):
    """A block-diagonal linear map of ``blocks`` independent square blocks (xlstm's
    ``LinearHeadwiseExpand``): ``weight (blocks, size, size)``, output block b reads input block b."""

    def __init__(self, features: int, blocks: int, bias: bool = False) -> None:
        super().__init__()
        self.blocks, self.size = blocks, features // blocks
        self.weight = nn.Parameter(torch.empty(blocks, self.size, self.size))
        self.bias = nn.Parameter(torch.zeros(features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=math.sqrt(2 / 5 / self.size))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.einsum("...bi,boi->...bo", x.unflatten(-1, (self.blocks, self.size)), self.weight).flatten(-2)
        return y if self.bias is None else y + self.bias


class HeadLayerNorm(nn.Module):
    """Layer norm of every head's d features on its own (a group norm with one group per head),
    scaled by ``1 + weight`` (xlstm's ``MultiHeadLayerNorm`` with a residual weight, zero at init)."""

    def __init__(self, features: int, heads: int, weight: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.heads, self.eps = heads, eps
        self.weight = nn.Parameter(torch.zeros(features)) if weight else None

    def forward(self, h: Tensor) -> Tensor:
        """``h (..., H, d)`` → ``(..., H·d)``."""
        shape = h.shape
        flat = h.reshape(-1, shape[-2] * shape[-1])
        scale = None if self.weight is None else 1.0 + self.weight.to(h.dtype)
        return F.group_norm(flat, self.heads, scale, None, self.eps).reshape(*shape[:-2], -1)
