"""Right-padded sequences: per-example lengths, and the SSM state after each one's last valid token.

Masks are (B, L) bool, True on valid tokens, right padding only. The final states are
computed by right-aligning every example (one gather, no loop over the batch) and one
contraction per block of positions (no loop over the length), so they compile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmgraph.ops.vandermonde import cexp, vandermonde_transpose


def mask_lengths(mask: Tensor | None, L: int) -> Tensor | None:
    """Per-example number of valid tokens of a right-padded (B, L) bool mask (None: all valid)."""
    if mask is None:
        return None
    if mask.shape[-1] != L:
        raise ValueError(f"mask has length {mask.shape[-1]}, the input has length {L}")
    return mask.sum(-1)


def right_align(u: Tensor, lengths: Tensor | None) -> Tensor:
    """Shift each example of ``u (B, ..., L)`` right so its last valid token sits at L-1, zeros before."""
    if lengths is None:
        return u
    L = u.shape[-1]
    idx = torch.arange(L, device=u.device) - (L - lengths)[:, None]  # (B, L)
    idx = idx.view(idx.shape[0], *([1] * (u.dim() - 2)), L)
    valid = idx >= 0
    out = torch.gather(u, -1, idx.clamp(min=0).expand(u.shape))
    return torch.where(valid, out, torch.zeros_like(out))


def diag_final_state(u: Tensor, log_dA: Tensor, dB: Tensor, x0: Tensor | None = None, lengths: Tensor | None = None) -> Tensor:
    """State after the last valid input of the diagonal recurrence ``x_t = dA x_{t-1} + dB u_t``.

    ``u (B, ..., H, L)`` real, ``log_dA``/``dB`` ``(H, N)``, ``x0 (B, ..., H, N)`` (zeros when
    None), ``lengths (B,)`` (all L when None). Computed as a Vandermonde-transpose product on
    the right-aligned, reversed input plus ``dA^len x0``.
    """
    L = u.shape[-1]
    u = right_align(u, lengths).flip(-1)
    x = vandermonde_transpose(u, log_dA) * dB
    if x0 is not None:
        n = torch.full((u.shape[0],), L, device=u.device) if lengths is None else lengths
        n = n.view(-1, *([1] * (x0.dim() - 1))).to(log_dA.real.dtype)
        x = x + cexp(n * log_dA) * x0
    return x


def dense_final_state(
    dA: Tensor,
    dB: Tensor,
    u: Tensor,
    x0: Tensor | None = None,
    lengths: Tensor | None = None,
    block: int = 64,
) -> Tensor:
    """State after the last valid input of ``x_t = dA x_{t-1} + dB u_t`` with dense ``dA (H, N, N)``.

    ``dB (H, N)``, ``u (B, ..., H, L)`` real, ``x0 (B, ..., H, N)``. Blocked: the columns
    ``dA^j dB`` (j < block) give each block's state with one contraction, and the block
    states are combined by a tree over powers ``dA^(block·2^k)``; cost O(B·H·N·L +
    B·H·N²·L/block + H·N³·log L) instead of a length-L loop.
    """
    L = u.shape[-1]
    u = right_align(u, lengths).to(dA.dtype)
    S = L if L <= block else 1 << (block - 1).bit_length()  # one block, or power-of-two blocks
    T = -(-L // S)
    u = F.pad(u, (T * S - L, 0))  # zeros in front do not change the final state
    # W[h, :, j] = dA^j dB for j < S, by doubling; afterwards Ap = dA^(2^k) with 2^k >= S.
    W, Ap = dB.unsqueeze(-1), dA
    while W.shape[-1] < S:
        W = torch.cat([W, Ap @ W], dim=-1)
        Ap = Ap @ Ap
    W = W[..., :S]
    ub = u.reshape(*u.shape[:-1], T, S).flip(-1)
    states = torch.einsum("hnj,...htj->...thn", W, ub)  # (B, ..., T, H, N)
    # Combine block states: x = Σ_t (dA^S)^(T-1-t) s_t, pairwise, padding T to a power of two in front.
    T2 = 1 << (T - 1).bit_length()
    states = F.pad(states, (0, 0, 0, 0, T2 - T, 0)) if T2 > T else states
    M = Ap  # = dA^S whenever T > 1 (S is then a power of two)
    while states.shape[-3] > 1:
        left, right = states[..., 0::2, :, :], states[..., 1::2, :, :]
        states = torch.einsum("hmn,...thn->...thm", M, left) + right
        M = M @ M
    x = states[..., 0, :, :]
    if x0 is not None:
        x = x + _power_apply(dA, x0, L, lengths)
    return x


def _power_apply(dA: Tensor, x0: Tensor, L: int, lengths: Tensor | None) -> Tensor:
    """``dA^n x0`` with n = lengths (per example) or L, by binary powers (``x0 (B, ..., H, N)``)."""
    if lengths is None:
        return torch.einsum("hmn,...hn->...hm", torch.linalg.matrix_power(dA, L), x0)
    n = lengths.view(-1, *([1] * (x0.dim() - 1)))
    x, M = x0, dA
    for bit in range(max(L, 1).bit_length()):
        x = torch.where((n >> bit) & 1 == 1, torch.einsum("hmn,...hn->...hm", M, x), x)
        M = M @ M
    return x
