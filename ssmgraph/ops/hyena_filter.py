"""The fixed parts of Hyena's implicit long filters (Poli et al. 2023, §3.3): the positional
features the filter FFN reads and the exponential-decay window that modulates its output.

Reference: HazyResearch/safari ``standalone_hyena.py`` (``PositionalEmbedding``,
``ExponentialModulation``); sizes and formulas are the same.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def positional_features(l_max: int, emb_dim: int, dtype: torch.dtype | None = None) -> Tensor:
    """``z (1, l_max, emb_dim)``: [t, Re e^{-i f w}, Im e^{-i f w}] with t = l / (l_max - 1),
    w = 2π l / l_max and (emb_dim - 1) / 2 frequencies f from 1e-4 to bands - 1."""
    bands = (emb_dim - 1) // 2
    t = torch.linspace(0, 1, l_max, dtype=torch.float64)[None, :, None]
    w = 2 * math.pi * torch.arange(l_max, dtype=torch.float64)[None, :, None] / l_max
    f = torch.linspace(1e-4, bands - 1, bands, dtype=torch.float64)[None, None]
    return torch.cat([t, torch.cos(f * w), -torch.sin(f * w)], dim=-1).to(dtype or torch.get_default_dtype())


def decay_rates(channels: int, fast_decay_pct: float, slow_decay_pct: float, target: float) -> Tensor:
    """``deltas (1, 1, channels)``: log(target)/slow_decay_pct to log(target)/fast_decay_pct, so
    channel c's window exp(-t |δ_c|) falls to ``target`` at t = 1/|δ_c| · log(1/target)."""
    return torch.linspace(math.log(target) / slow_decay_pct, math.log(target) / fast_decay_pct, channels)[None, None]


def modulate(h: Tensor, deltas: Tensor, l_max: int, shift: float = 0.0) -> Tensor:
    """``h (1, L, C) · (exp(-t |δ|) + shift)`` with t = l / (l_max - 1) for the L positions of ``h``."""
    L = h.shape[-2]
    t = torch.arange(L, device=h.device, dtype=h.dtype)[None, :, None] / max(l_max - 1, 1)
    return h * (torch.exp(-t * deltas.abs().to(h.dtype)) + shift)
