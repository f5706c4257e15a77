"""The gated RMSNorm of Mamba-2 (state-spaces/mamba ``ops/triton/layernorm_gated.py``, ``rms_norm_ref``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def gated_rms_norm(
    y: Tensor, z: Tensor, weight: Tensor | None, eps: float, groups: int, norm_before_gate: bool = False
) -> Tensor:
    """Upstream's ``RMSNormGated`` (``rms_norm_ref``): RMSNorm over ``groups`` equal groups of the
    last dim of y ⊙ silu(z) (``norm_before_gate``: of y, gated afterwards); ``weight`` None: no norm."""
    gate = F.silu(z)
    if weight is None:
        return y * gate
    if not norm_before_gate:
        y = y * gate
    yg = y.unflatten(-1, (groups, -1))
    y = (yg * torch.rsqrt(yg.square().mean(-1, keepdim=True) + eps)).flatten(-2) * weight
    return y * gate if norm_before_gate else y
