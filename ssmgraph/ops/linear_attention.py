"""Gated linear attention (GLA): the recurrent step and the numerically stable chunked form.

Per batch item and head, with a key-wise decay ``α_t = exp(log_a_t) ∈ (0, 1]^K``::

    S_t = diag(α_t) S_{t-1} + k_t^T v_t        S_t ∈ R^{K×V}
    o_t = (scale · q_t) S_t

(Yang et al. 2024, "Gated Linear Attention Transformers with Hardware-Efficient Training",
§4; fla ``fla/ops/gla`` has the same state layout and default ``scale = K^-1/2``.)

:func:`chunk_gla` is the chunkwise-parallel form of §4.2/§4.3. With ``b_t`` the cumulative
sum of ``log_a`` inside a chunk of ``C`` positions and ``S_0`` the state entering it::

    o_t = (q_t ⊙ e^{b_t}) S_0 + Σ_{s ≤ t in the chunk} (Σ_k q_tk k_sk e^{b_tk − b_sk}) v_s
    S_C = diag(e^{b_C}) S_0 + Σ_s (k_s ⊙ e^{b_C − b_s})^T v_s

Every exponent used is ≤ 0, so nothing overflows, whatever the decays (the paper's
"secondary chunking"): the intra-chunk scores are computed between sub-chunks of ``c``
positions through the first position ``n`` of the query's sub-chunk,
``q_t e^{b_t − b_n} · k_s e^{b_n − b_s}`` (both factors ≤ 1 for s < n ≤ t), and inside a
sub-chunk from the full (c, c, K) table of ``e^{b_t − b_s}``, s ≤ t. The chunk states are
chained by :func:`~ssmgraph.ops.scan.sequential_scan`. Cost O(L·C·K + L·K·V) per head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmgraph.ops.scan import sequential_scan


def gla_step(q: Tensor, k: Tensor, v: Tensor, log_a: Tensor, state: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """One token: q, k, log_a (B, H, K), v (B, H, V), state (B, H, K, V) -> (o (B, H, V), new state)."""
    state = torch.exp(log_a).unsqueeze(-1) * state + k.unsqueeze(-1) * v.unsqueeze(-2)
    return torch.einsum("bhk,bhkv->bhv", q * scale, state), state


def pad_length(x: Tensor, length: int, dim: int = 2) -> Tensor:
    """Zeros appended along ``dim`` up to ``length`` (a zero key, value and log-decay leave a state as it is)."""
    extra = length - x.shape[dim]
    if extra == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [0, extra]
    return F.pad(x, pad)


def chunk_sizes(length: int, chunk_size: int, sub_chunk: int = 1) -> tuple[int, int]:
    """(C, number of chunks): C is ``chunk_size``, or less for a short sequence (a multiple of ``sub_chunk``)."""
    c = min(chunk_size, math.ceil(max(length, 1) / sub_chunk) * sub_chunk)
    return c, math.ceil(max(length, 1) / c)


def _masked_exp(x: Tensor, keep: Tensor) -> Tensor:
    """exp(x) where ``keep``, 0 elsewhere (the exponent is masked first, so no overflow)."""
    return torch.exp(x.masked_fill(~keep, float("-inf")))


def _intra_scores(q: Tensor, k: Tensor, b: Tensor, sub: int) -> Tensor:
    """Causal intra-chunk scores A[t, s] = Σ_k q_tk k_sk e^{b_tk − b_sk} (s ≤ t): (..., C, C)."""
    *lead, c_len, dk = q.shape
    m = c_len // sub
    qs, ks, bs = (t.reshape(*lead, m, sub, dk) for t in (q, k, b))
    ref = bs[..., :, :1, :]  # (..., M, 1, K): the first position of each query sub-chunk
    q_ref = qs * torch.exp(bs - ref)
    earlier = torch.ones(m, m, dtype=torch.bool, device=q.device).tril(-1)  # key sub-chunk j < query sub-chunk i
    decay = _masked_exp(ref.unsqueeze(-3) - bs.unsqueeze(-4), earlier[:, :, None, None])  # (..., M, M, c, K)
    between = torch.einsum("...itk,...ijsk->...itjs", q_ref, ks.unsqueeze(-4) * decay)
    causal = torch.ones(sub, sub, dtype=torch.bool, device=q.device).tril()
    table = _masked_exp(bs.unsqueeze(-2) - bs.unsqueeze(-3), causal[:, :, None])  # (..., M, c, c, K)
    within = torch.einsum("...tk,...sk,...tsk->...ts", qs, ks, table)
    eye = torch.eye(m, dtype=q.dtype, device=q.device)
    scores = between + torch.einsum("...its,ij->...itjs", within, eye)
    return scores.reshape(*lead, c_len, c_len)


def chunk_gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_a: Tensor,
    *,
    scale: float,
    initial_state: Tensor | None = None,
    chunk_size: int = 64,
    sub_chunk: int = 16,
) -> tuple[Tensor, Tensor]:
    """GLA over a whole sequence: q, k, log_a (B, H, L, K), v (B, H, L, V), initial_state (B, H, K, V).

    Returns (o (B, H, L, V), final state (B, H, K, V)), computed in the inputs' dtype (pass
    fp32 or fp64). ``log_a`` ≤ 0. Any length: the last chunk is padded with zeros.
    """
    batch, heads, length, dk = q.shape
    dv = v.shape[-1]
    sub = min(sub_chunk, chunk_size)
    if chunk_size % sub:
        sub = chunk_size
    c, n = chunk_sizes(length, chunk_size, sub)
    q, k, v, log_a = (pad_length(t, n * c).reshape(batch, heads, n, c, -1) for t in (q * scale, k, v, log_a))
    b = log_a.cumsum(dim=-2)  # (B, H, N, C, K), ≤ 0 and decreasing
    o = _intra_scores(q, k, b, sub) @ v
    b_last = b[..., -1:, :]
    chunk_kv = (k * torch.exp(b_last - b)).transpose(-1, -2) @ v  # (B, H, N, K, V)
    decay = torch.exp(b_last).transpose(-1, -2)  # (B, H, N, K, 1)
    s0 = q.new_zeros(batch, heads, dk, dv) if initial_state is None else initial_state.to(q.dtype)
    after = sequential_scan(decay, chunk_kv, dim=2, x0=s0)  # the state after each chunk
    before = torch.cat([s0.unsqueeze(2), after[:, :, :-1]], dim=2)
    o = o + (q * torch.exp(b)) @ before
    return o.reshape(batch, heads, n * c, dv)[:, :, :length], after[:, :, -1]
