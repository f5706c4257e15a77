"""The mLSTM memory (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory", §2.3 and
appendix A.3): its recurrent step and a chunked parallel form that equals it.

Per head, with q_t, k_t, v_t ∈ R^d, log input gate ĩ_t (i_t = exp ĩ_t) and log forget gate
f̂_t (log σ(f̃_t) for a sigmoid forget gate, f̃_t for an exponential one)::

    k_t ← k_t / √d
    m_t = max(f̂_t + m_{t-1}, ĩ_t)                       stabiliser (the max trick)
    i'_t = exp(ĩ_t - m_t),  f'_t = exp(f̂_t + m_{t-1} - m_t)
    C_t = f'_t C_{t-1} + i'_t v_t k_tᵀ                   (d × d, values × keys)
    n_t = f'_t n_{t-1} + i'_t k_t
    h_t = C_t q_t / (max(|n_tᵀ q_t|, exp(-m_t)) + eps)

The stabilised C, n are the paper's unstabilised ones times exp(-m_t), so h_t is the paper's
C q / max(|nᵀq|, 1) (up to eps, as the official xlstm package). The state is (C, n, m); zero
means C = 0, n = 0, m = 0 (the official recurrent kernel's start).

The chunked form (chunks of T positions) is the same recurrence in closed form: with
G_t = Σ_{r ≤ t} f̂_r inside a chunk, the state carried in (C₀, n₀, m₀) and the intra-chunk log
weights D_ts = G_t - G_s + ĩ_s (s ≤ t), the stabiliser is m_t = max(G_t + m₀, max_s D_ts) and
h_t's numerator is exp(G_t + m₀ - m_t) C₀ q_t + Σ_s exp(D_ts - m_t) (q_t·k_s) v_s (the
denominator alike with n₀ and 1 for v_s). Each chunk's contribution to the next state is
computed for all chunks at once; only the (C, n, m) hand-over runs chunk after chunk.

A position with ĩ = -inf and f̂ = 0 leaves the state as it is: right padding (and the padding
to a whole number of chunks) is written that way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MLSTMState = tuple[Tensor, Tensor, Tensor]


def zero_mlstm_state(batch: int, heads: int, d: int, *, device: torch.device | None, dtype: torch.dtype) -> MLSTMState:
    """(C (B, H, d, d), n (B, H, d), m (B, H)), all zero."""
    return (
        torch.zeros(batch, heads, d, d, device=device, dtype=dtype),
        torch.zeros(batch, heads, d, device=device, dtype=dtype),
        torch.zeros(batch, heads, device=device, dtype=dtype),
    )


def mlstm_step(
    q: Tensor, k: Tensor, v: Tensor, log_i: Tensor, log_f: Tensor, state: MLSTMState, eps: float = 1e-6
) -> tuple[Tensor, MLSTMState]:
    """One position: ``q, k, v (B, H, d)``, ``log_i, log_f (B, H)`` → (h (B, H, d), new state)."""
    C, n, m = state
    k = k / math.sqrt(k.shape[-1])
    m_new = torch.maximum(log_f + m, log_i)
    i = torch.exp(log_i - m_new)
    f = torch.exp(log_f + m - m_new)
    C = f[..., None, None] * C + i[..., None, None] * (v.unsqueeze(-1) * k.unsqueeze(-2))
    n = f[..., None] * n + i[..., None] * k
    num = (C @ q.unsqueeze(-1)).squeeze(-1)
    den = (n * q).sum(-1)
    h = num / (torch.maximum(den.abs(), torch.exp(-m_new)) + eps).unsqueeze(-1)
    return h, (C, n, m_new)


def mlstm_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_i: Tensor,
    log_f: Tensor,
    state: MLSTMState | None = None,
    chunk: int = 64,
    eps: float = 1e-6,
) -> tuple[Tensor, MLSTMState]:
    """All positions: ``q, k, v (B, H, L, d)``, ``log_i, log_f (B, H, L)`` → (h (B, H, L, d), final state).

    Equals :func:`mlstm_step` applied position after position (see the module doc)."""
    B, H, L, d = q.shape
    if state is None:
        state = zero_mlstm_state(B, H, d, device=q.device, dtype=q.dtype)
    T = max(1, min(chunk, L))
    pad = -L % T
    if pad:  # positions that leave the state as it is
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        log_i = F.pad(log_i, (0, pad), value=-math.inf)
        log_f = F.pad(log_f, (0, pad))
    nc = (L + pad) // T
    q, k, v = (t.reshape(B, H, nc, T, d) for t in (q, k, v))
    k = k / math.sqrt(d)
    log_i, log_f = log_i.reshape(B, H, nc, T), log_f.reshape(B, H, nc, T)
    G = torch.cumsum(log_f, dim=-1)  # (B, H, nc, T)
    G_end = G[..., -1]
    # What each chunk adds to the state at its end, stabilised by its own maximum m_loc.
    w_end = G_end.unsqueeze(-1) - G + log_i
    m_loc = w_end.amax(-1)
    safe = torch.where(torch.isfinite(m_loc), m_loc, torch.zeros_like(m_loc))  # a chunk of padding adds nothing
    e = torch.exp(w_end - safe.unsqueeze(-1))
    C_loc = torch.einsum("bhcs,bhcsv,bhcsk->bhcvk", e, v, k)
    n_loc = torch.einsum("bhcs,bhcsk->bhck", e, k)
    # Hand the state over chunk after chunk (the only sequential part).
    # Unbound once: indexing chunk c inside the loop would give each step a backward that writes a
    # zero tensor of the whole sequence's size, quadratic in the number of chunks.
    C, n, m = state
    starts_C, starts_n, starts_m = [], [], []
    for g_c, m_c, C_c, n_c in zip(G_end.unbind(-1), m_loc.unbind(-1), C_loc.unbind(2), n_loc.unbind(2), strict=True):
        starts_C.append(C)
        starts_n.append(n)
        starts_m.append(m)
        m_new = torch.maximum(g_c + m, m_c)
        a = torch.exp(g_c + m - m_new)
        b = torch.exp(m_c - m_new)
        C = a[..., None, None] * C + b[..., None, None] * C_c
        n = a[..., None] * n + b[..., None] * n_c
        m = m_new
    C0, n0, m0 = torch.stack(starts_C, 2), torch.stack(starts_n, 2), torch.stack(starts_m, 2)
    # Outputs of every chunk at once.
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    D = (G.unsqueeze(-1) - G.unsqueeze(-2) + log_i.unsqueeze(-2)).masked_fill(~causal, -math.inf)  # (B, H, nc, T, T)
    m_inter = G + m0.unsqueeze(-1)
    m_t = torch.maximum(m_inter, D.amax(-1))
    S = (q @ k.transpose(-1, -2)) * torch.exp(D - m_t.unsqueeze(-1))
    carry = torch.exp(m_inter - m_t)
    num = S @ v + carry.unsqueeze(-1) * torch.einsum("bhcvk,bhctk->bhctv", C0, q)
    den = S.sum(-1) + carry * torch.einsum("bhck,bhctk->bhct", n0, q)
    h = num / (torch.maximum(den.abs(), torch.exp(-m_t)) + eps).unsqueeze(-1)
    h = h.reshape(B, H, nc * T, d)[:, :, :L]
    return h, (C, n, m)
