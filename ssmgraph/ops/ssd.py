"""State space duality (SSD): the scan of Mamba-2, chunked into matrix multiplications.

Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
Structured State Space Duality" (§6, Listing 1), following state-spaces/mamba
``mamba_ssm/modules/ssd_minimal.py`` and ``ops/triton/ssd_combined.py``. For each batch item,
head h (of H, P channels each) and group g(h) = h // (H / G) whose B and C it reads::

    h_t = exp(Δ_t A_h) h_{t-1} + Δ_t x_t B_tᵀ            h_t ∈ R^{P×N}; A_h < 0 a scalar per head
    y_t = h_t C_t + D_h x_t                              x_t, y_t ∈ R^P; B_t, C_t ∈ R^N of group g(h)

so A is a scalar times the identity per head, and B, C are shared by the H/G heads of a group.
Unrolled, y = M x with the 1-semiseparable mask M[t, s] = C_tᵀ B_s exp(Σ_{k=s+1..t} Δ_k A) Δ_s
for s ≤ t: quadratic "attention" form and linear recurrent form compute the same thing.

The chunked form (:func:`ssd_chunked`) cuts the sequence into chunks of Q steps and uses each
form where it is cheap. With a_t = Δ_t A (the log-decay, ≤ 0) and, inside a chunk,
seg[l, s] = Σ_{k=s+1..l} a_k (the segment sum) and cs_l = Σ_{k≤l} a_k:

1. intra-chunk (the diagonal blocks, masked matmuls): Y_diag = (C Bᵀ ⊙ exp(seg)) (Δ x);
2. each chunk's own final state: S_c = Σ_s exp(seg[Q-1, s]) Δ_s x_s B_sᵀ;
3. inter-chunk state passing: H_c = exp(cs_{Q-1}) H_{c-1} + S_c from the initial state H_{-1};
4. state to output: Y_off[l] = exp(cs_l) H_{c-1} C_l, and y = Y_diag + Y_off + D x.

The (Q × Q) matrices exist per chunk only, never per full length, so time and memory are
linear in L. The segment sums are computed stably, as the SSD paper's ``segsum``: a
cumulative sum of the masked log-decays within the chunk, not a difference of long
cumulative sums (which would cancel catastrophically), and the entries above the diagonal are
-inf before the exponential, so nothing overflows and their gradients are zero. A length
that is not a multiple of Q is padded with Δ = 0 (decay 1, no input), which leaves the final
state as it was at the last real step.

Shapes follow ``mamba_chunk_scan_combined``: x (b, L, H, P), Δ (b, L, H) (the final step
sizes: bias, softplus and limits already applied), A (H,), B and C (b, L, G, N), D (H,),
states (b, H, P, N). The work runs in fp32 (fp64 inputs stay fp64); y comes back in x's dtype.
:func:`ssd_recurrent` is the reference: the recurrence above, one :func:`ssd_step` per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmgraph.ops.precision import compute_dtype
from ssmgraph.ops.scan import sequential_scan

SEGMENT_ELEMENTS = 1 << 22
"""Long sequences run in segments of whole chunks, the state carried between them, so that one
segment's (Q × Q) matrices hold about this many elements (16 MB in fp32): measured 1.5× faster
forward+backward at L = 16k than one pass, whose large temporaries no longer fit any cache."""


def segsum(a: Tensor) -> Tensor:
    """seg[..., l, s] = Σ_{k=s+1..l} a[..., k] for s ≤ l, -inf above the diagonal (last dim Q → Q × Q)."""
    q = a.shape[-1]
    x = a.unsqueeze(-1).expand(*a.shape, q)  # x[..., k, s] = a_k
    lower = torch.ones(q, q, dtype=torch.bool, device=a.device).tril()
    seg = x.masked_fill(~lower.tril(-1), 0.0).cumsum(dim=-2)  # Σ_{s<k≤l} a_k
    return seg.masked_fill(~lower, float("-inf"))


class _ContiguousGrad(torch.autograd.Function):
    """The identity, whose backward makes the gradient contiguous: the gradient of the permuted
    output arrives permuted, and CPU ``bmm`` multiplies such batches one matrix at a time."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad.contiguous()


def _heads_of_groups(t: Tensor, heads: int) -> Tensor:
    """(b, G, N) -> (b, H, N): each group's vector for each of its H/G heads."""
    return t.repeat_interleave(heads // t.shape[1], dim=1)


def ssd_step(
    state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One token: state (b, H, P, N), x (b, H, P), Δ (b, H), B and C (b, G, N) -> (y (b, H, P), new state)."""
    heads = x.shape[1]
    Bh, Ch = _heads_of_groups(B, heads), _heads_of_groups(C, heads)
    decay = torch.exp(dt * A)[..., None, None]
    state = decay * state + (dt.unsqueeze(-1) * x).unsqueeze(-1) * Bh.unsqueeze(-2)
    y = torch.matmul(state, Ch.unsqueeze(-1)).squeeze(-1)
    if D is not None:
        y = y + D.unsqueeze(-1) * x
    return y, state


def ssd_recurrent(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The reference: the recurrence token by token (:func:`ssd_step`), same arguments as :func:`ssd_chunked`."""
    batch, _, heads, p = x.shape
    cdt = compute_dtype(x.dtype)
    x, dt, A, B, C = (t.to(cdt) for t in (x, dt, A, B, C))
    D = None if D is None else D.to(cdt)
    n = B.shape[-1]
    state = x.new_zeros(batch, heads, p, n) if initial_state is None else initial_state.to(cdt)
    ys = []
    for x_t, dt_t, B_t, C_t in zip(x.unbind(1), dt.unbind(1), B.unbind(1), C.unbind(1)):
        y_t, state = ssd_step(state, x_t, dt_t, A, B_t, C_t, D)
        ys.append(y_t)
    y = torch.stack(ys, dim=1)
    return (y, state) if return_final_state else y


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The SSD scan in chunks of ``chunk_size`` steps (see the module doc); equal to :func:`ssd_recurrent`.

    Any length works (the last chunk is padded); a sequence shorter than ``chunk_size`` is one
    chunk of its own length. ``initial_state`` (b, H, P, N) is h_{-1} (zeros when None)."""
    batch, length, heads, p = x.shape
    groups, n = B.shape[-2:]
    if length == 0:
        raise ValueError("ssd_chunked needs at least one time step (got a length-0 sequence)")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if heads % groups:
        raise ValueError(f"{heads} heads do not split into {groups} groups of B and C")
    dtype_in, cdt = x.dtype, compute_dtype(x.dtype)
    x, dt, A, B, C = (t.to(cdt) for t in (x, dt, A, B, C))
    D = None if D is None else D.to(cdt)
    h = x.new_zeros(batch, heads, p, n) if initial_state is None else initial_state.to(cdt)
    q = min(chunk_size, length)
    segment = max(1, SEGMENT_ELEMENTS // (batch * heads * q * q)) * q
    ys = []
    for start in range(0, length, segment):
        part = slice(start, start + segment)
        y, h = _ssd_segment(x[:, part], dt[:, part], A, B[:, part], C[:, part], q, D, h)
        ys.append(y)
    y = (ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)).to(dtype_in)
    return (y, h) if return_final_state else y


def _ssd_segment(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int, D: Tensor | None, h: Tensor
) -> tuple[Tensor, Tensor]:
    """Steps 1-4 of the module doc on one segment, from the state ``h`` (b, H, P, N); (y, final state)."""
    batch, length, heads, p = x.shape
    groups, n = B.shape[-2:]
    q = min(chunk_size, length)
    chunks = -(-length // q)
    pad = chunks * q - length
    hg = heads // groups

    def chunked(t: Tensor) -> Tensor:  # (b, L, ...) -> (b, chunks, Q, ...), zero padded
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) if pad else t
        return t.reshape(batch, chunks, q, *t.shape[2:])

    # heads as (G, H/G): every tensor below is (b, G, H/G, chunks, Q, ...) or broadcasts to it
    xc = chunked(x).view(batch, chunks, q, groups, hg, p).permute(0, 3, 4, 1, 2, 5).contiguous()
    dtc, a = (chunked(t).view(batch, chunks, q, groups, hg).permute(0, 3, 4, 1, 2) for t in (dt, dt * A))
    Bc, Cc = (chunked(t).permute(0, 3, 1, 2, 4).contiguous().unsqueeze(2) for t in (B, C))  # (b, G, 1, chunks, Q, N)
    cs = a.cumsum(dim=-1)
    decay = torch.exp(segsum(a))  # (b, G, H/G, chunks, Q, Q), zero above the diagonal
    # 1. intra-chunk: (C Bᵀ ⊙ decay ⊙ Δ_s + D I) x, C Bᵀ once per group; Δ and D go into the Q × Q
    # matrix (built anyway) and the decays into B and C below, so x is never rescaled
    scores = torch.matmul(Cc, Bc.transpose(-1, -2)) * (decay * dtc.unsqueeze(-2))
    if D is not None:
        scores = scores + torch.diag_embed(D.view(groups, hg, 1, 1).expand(*scores.shape[1:4], q))
    y = torch.matmul(scores, xc)
    # 2. each chunk's state from its own inputs: Σ_s x_s (exp(seg[Q-1, s]) Δ_s B_s)ᵀ -> (…, P, N)
    states = torch.matmul(xc.transpose(-1, -2), Bc * (decay[..., -1, :] * dtc).unsqueeze(-1))
    # 3. state passing between chunks: H_c = exp(cs_{Q-1}) H_{c-1} + S_c, a scan over the chunks
    h = h.reshape(batch, groups, hg, p, n)
    after = sequential_scan(torch.exp(cs[..., -1])[..., None, None], states, dim=3, x0=h)
    # the state entering each chunk, (b, G, H/G, chunks, P, N)
    prev = torch.cat([h.unsqueeze(3), after[:, :, :, :-1]], dim=3)
    h = after[:, :, :, -1]
    # 4. state -> output: (exp(cs_l) C_l) H_{c-1}ᵀ
    y = y + torch.matmul(Cc * torch.exp(cs).unsqueeze(-1), prev.transpose(-1, -2))
    y = _ContiguousGrad.apply(y).permute(0, 3, 4, 1, 2, 5).reshape(batch, chunks * q, heads, p)[:, :length]
    return y, h.reshape(batch, heads, p, n)
