"""The (gated) delta rule: the recurrent step and the chunked WY form for training.

Per batch item and head, with the state in fla's layout S_t ∈ R^{K×V} (the transpose of the
papers' V×K matrix), writing strength β_t ∈ (0, 1] (or (0, 2] with negative eigenvalues)
and an optional scalar decay α_t = exp(log_α_t) ∈ (0, 1]::

    S_t = α_t (I − β_t k_t k_t^T) S_{t-1} + β_t k_t v_t^T
    o_t = S_t^T (scale · q_t)

This is DeltaNet (Schlag et al. 2021; Yang et al. 2024, "Parallelizing Linear Transformers
with the Delta Rule over Sequence Length") with α = 1 and Gated DeltaNet (Yang, Kautz &
Hatamizadeh 2025, eq. 10) otherwise; in the papers' convention
S_t = S_{t-1} (α_t (I − β_t k_t k_t^T)) + β_t v_t k_t^T and o_t = S_t q_t.

:func:`chunk_delta_rule` is the chunkwise form (Yang et al. 2024 §3, with the decays of the
Gated DeltaNet paper §3.3). Writing S_t = α_t S_{t-1} + k_t u_t^T defines the pseudo-values
u_t = β_t (v_t − α_t S_{t-1}^T k_t). Inside a chunk of C positions entering with state S_0,
with γ_t = Π_{r ≤ t} α_r and Γ_ts = γ_t / γ_s (s ≤ t, all ≤ 1)::

    (I + diag(β) tril(Γ ⊙ K K^T, −1)) U = diag(β) V − diag(β γ) K S_0
    U = T diag(β) V − T diag(β γ) K S_0 = Ũ − W S_0          T: the UT transform (WY form)
    O   = diag(γ) Q S_0 + (tril(Q K^T) ⊙ Γ) U
    S_C = γ_C S_0 + (K ⊙ γ_C / γ)^T U

T, Ũ and W of every chunk come from one batched unit-triangular solve; only the short chain
U = Ũ − W S_0 → O, S_C runs chunk after chunk. Cost O(L·C·(K + V) + L·K·V) per head.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssmgraph.ops.linear_attention import chunk_sizes, pad_length


def delta_rule_step(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, state: Tensor, *, scale: float, log_alpha: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One token: q, k (B, H, K), v (B, H, V), beta, log_alpha (B, H), state (B, H, K, V) -> (o (B, H, V), new state)."""
    if log_alpha is not None:
        state = torch.exp(log_alpha)[..., None, None] * state
    u = beta.unsqueeze(-1) * (v - torch.einsum("bhk,bhkv->bhv", k, state))
    state = state + k.unsqueeze(-1) * u.unsqueeze(-2)
    return torch.einsum("bhk,bhkv->bhv", q * scale, state), state


def chunk_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    *,
    scale: float,
    log_alpha: Tensor | None = None,
    initial_state: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """The delta rule over a sequence: q, k (B, H, L, K), v (B, H, L, V), beta, log_alpha (B, H, L).

    Returns (o (B, H, L, V), final state (B, H, K, V)) in the inputs' dtype (pass fp32 or
    fp64). ``log_alpha`` None: plain DeltaNet. Any length: the last chunk is padded with
    zeros (β = 0, α = 1: the state passes unchanged).
    """
    batch, heads, length, dk = q.shape
    dv = v.shape[-1]
    c, n = chunk_sizes(length, chunk_size)
    q, k, v = (pad_length(t, n * c).reshape(batch, heads, n, c, -1) for t in (q * scale, k, v))
    beta = pad_length(beta.unsqueeze(-1), n * c).reshape(batch, heads, n, c)
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    if log_alpha is None:
        gamma = gamma_last = to_end = None
        ratio = causal.to(q.dtype)
    else:
        g = pad_length(log_alpha.unsqueeze(-1), n * c).reshape(batch, heads, n, c).cumsum(-1)
        gamma, gamma_last, to_end = torch.exp(g), torch.exp(g[..., -1:]), torch.exp(g[..., -1:] - g)  # all ≤ 1
        ratio = torch.exp((g.unsqueeze(-1) - g.unsqueeze(-2)).masked_fill(~causal, float("-inf")))  # Γ, (B, H, N, C, C)
    kk = (k @ k.transpose(-1, -2) * ratio).tril(-1) * beta.unsqueeze(-1)
    eye = torch.eye(c, dtype=q.dtype, device=q.device)
    bk = beta.unsqueeze(-1) * k if gamma is None else (beta * gamma).unsqueeze(-1) * k
    solved = torch.linalg.solve_triangular(eye + kk, torch.cat([beta.unsqueeze(-1) * v, bk], -1), upper=False, unitriangular=True)
    u_tilde, w = solved.split([dv, dk], dim=-1)
    scores = q @ k.transpose(-1, -2) * ratio  # tril(Q K^T) ⊙ Γ
    if gamma is None:
        q_in, k_out = q, k
    else:
        q_in, k_out = q * gamma.unsqueeze(-1), k * to_end.unsqueeze(-1)  # γ_C / γ as one exp: γ underflows
    state = q.new_zeros(batch, heads, dk, dv) if initial_state is None else initial_state.to(q.dtype)
    decays = [None] * n if gamma_last is None else gamma_last.unsqueeze(-1).unbind(2)
    outs = []  # slices taken once with unbind: indexing inside the loop makes the backward O(n²)
    for u_t, w_i, q_i, s_i, k_i, d_i in zip(*(t.unbind(2) for t in (u_tilde, w, q_in, scores, k_out)), decays):
        u = u_t - w_i @ state
        outs.append(q_i @ state + s_i @ u)
        state = (state if d_i is None else d_i * state) + k_i.transpose(-1, -2) @ u
    o = torch.stack(outs, dim=2).reshape(batch, heads, n * c, dv)
    return o[:, :, :length], state
