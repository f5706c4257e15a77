"""The selective scan of Mamba (S6) in plain PyTorch, with a fast CPU path.

For each batch item, channel d and state n::

    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t        (ZOH for A, Euler for B, as upstream)
    y_t = Σ_n h_t C_t + D u_t,    then  y_t ← y_t · silu(z_t)  when z is given

Shapes follow state-spaces/mamba ``ops/selective_scan_interface.py``: u, Δ, z are
(batch, d, L); A is (d, N); B, C are (batch, N, L) (input-dependent, shared by all channels);
D and the Δ bias are (d,). The work is done in fp32 (fp64 inputs stay fp64) and cast back to
the dtype of ``u``. Complex A and grouped B/C of the upstream reference are not supported.

Two entry points:

- :func:`selective_scan_ref`: the naive reference (upstream ``selective_scan_ref``, plus an
  initial state): materialises exp(ΔA) and ΔuB for the whole sequence and loops over time,
  with autograd through the loop. Tests compare everything against it.
- :func:`selective_scan`: the same function through :class:`_SelectiveScan`, an
  ``autograd.Function`` with a hand-written backward. The forward walks the sequence in
  time chunks and keeps only the state at each chunk boundary; the backward recomputes the
  states of one chunk at a time and runs the adjoint recurrence
  ``g_t = dy_t C_t + exp(Δ_{t+1} A) ⊙ g_{t+1}`` backwards, then gets every parameter
  gradient of the chunk with batched contractions. Inside a chunk the linear recurrence is
  solved by one of two algorithms:

  - ``"loop"``: sequential, one in-place ``addcmul_`` per step over ``unbind``-ed slices
    (indexing ``a[t]`` in an autograd loop makes the backward O(L²); here the loop runs
    under no_grad, so that trap is avoided by construction);
  - ``"blelloch"``: the work-efficient parallel scan (pairwise combination, recursion on
    the odd positions, then the even positions), O(L) work in O(log L) sweeps of vector ops.

  ``method="auto"`` picks by the per-step slice size ``batch·d·N`` and the length.

Measured on the 2-core CPU of the dev machine, idle, 2 threads, torch 2.13, fp32 (reproduce
with ``python benchmarks/bench_selective_scan.py --sweep``; full tables in
docs/blocks/mamba.md). Forward+backward seconds, peak memory in MB:

  ============================  ============  ============  ============
  batch·L·d·N (b·d·N per step)  ref           loop          blelloch
  ============================  ============  ============  ============
  8·1024·512·16 (65536)         2.94 / 2411   0.365 / 294   0.713 / 278
  1·1024·128·16 (2048)          -             0.0255        0.0311
  1·1024·64·16 (1024)           0.142         0.0165        0.0151
  1·1024·16·16 (256)            -             0.0114        0.0048
  1·16·16·16 (256)              -             0.0006        0.0008
  ============================  ============  ============  ============

So the custom backward is 8x faster than autograd through the reference loop at the
Mamba-sized shape with 8x less memory, the loop wins from b·d·N ≈ 2048 up, Blelloch wins
below that (up to 2.4x at 256) once L > 64, and a short sequence is a loop whatever its
width. ``auto`` encodes exactly this (:data:`LOOP_MIN_SLICE`, :data:`LOOP_MAX_LEN`).

References: Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces"; state-spaces/mamba ``selective_scan_ref``; Blelloch 1990, "Prefix sums and their
applications"; alxndrTL/mamba.py ``pscan.py`` (custom-backward Blelloch scan).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ssmgraph.ops.precision import compute_dtype

METHODS = ("auto", "loop", "blelloch")

LOOP_MIN_SLICE = 2048
"""``auto`` uses the sequential loop when batch·d·N is at least this (measured crossover)."""
LOOP_MAX_LEN = 64
"""``auto`` uses the loop for sequences this short whatever the slice size (measured: the
two tie from 16 to 64 steps at b·d·N = 256; Blelloch wins from 128)."""
CHUNK_ELEMENTS = 1 << 20
"""Target size (elements) of one (chunk, batch, d, N) work buffer of the fast path (4 MB in
fp32: the buffers of a chunk then stay in cache; larger chunks measured slower)."""
MIN_CHUNK = 16


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Naive selective scan (the upstream reference loop); see the module docstring for shapes.

    ``initial_state`` (batch, d, N) is h_{-1} (zeros when None); with ``return_last_state``
    the state after the last step is returned too.
    """
    dtype_in = u.dtype
    cdt = compute_dtype(dtype_in)
    u, delta, A, B, C = (t.to(cdt) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, d, _ = u.shape
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(batch, d, A.shape[1]) if initial_state is None else initial_state.to(cdt)
    ys = []
    for a_t, b_t, c_t in zip(deltaA.unbind(2), deltaB_u.unbind(2), C.unbind(2)):
        h = a_t * h + b_t
        ys.append(torch.einsum("bdn,bn->bd", h, c_t))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D.to(cdt)[..., None]
    if z is not None:
        y = y * F.silu(z.to(cdt))
    y = y.to(dtype_in)
    return (y, h) if return_last_state else y


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: Tensor | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan, equal to :func:`selective_scan_ref`, through the fast custom backward.

    ``method`` is ``"auto"``, ``"loop"`` or ``"blelloch"``; ``chunk_size`` overrides the
    number of time steps held in one work buffer (default: :data:`CHUNK_ELEMENTS` worth for
    both algorithms, at least :data:`MIN_CHUNK` steps). Second-order gradients are not supported.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
    dtype_in = u.dtype
    cdt = compute_dtype(dtype_in)
    batch, d, length = u.shape
    n = A.shape[1]
    if length == 0:
        raise ValueError("selective_scan needs at least one time step (got a length-0 sequence)")
    if method == "auto":
        method = pick_method(batch, d, n, length)
    if chunk_size is None:
        chunk_size = max(MIN_CHUNK, CHUNK_ELEMENTS // (batch * d * n))
    u, delta, A, B, C = (t.to(cdt) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    h0 = u.new_zeros(batch, d, n) if initial_state is None else initial_state.to(cdt)
    y, h_last = _SelectiveScan.apply(u, delta, A, B, C, h0, method, chunk_size)
    if D is not None:
        y = y + u * D.to(cdt)[..., None]
    if z is not None:
        y = y * F.silu(z.to(cdt))
    y = y.to(dtype_in)
    return (y, h_last) if return_last_state else y


def pick_method(batch: int, d: int, n: int, length: int) -> str:
    """The algorithm ``method="auto"`` uses for these sizes (see the measured crossover)."""
    if length <= LOOP_MAX_LEN or batch * d * n >= LOOP_MIN_SLICE:
        return "loop"
    return "blelloch"


def _recurrence_loop(a: Tensor, b: Tensor) -> Tensor:
    """In place on ``b``: h_0 = b_0, h_t = a_{t-1} h_{t-1} + b_t (``a`` has one step fewer)."""
    bs = b.unbind(0)
    for a_t, b_prev, b_t in zip(a.unbind(0), bs[:-1], bs[1:]):
        b_t.addcmul_(a_t, b_prev)
    return b


def _recurrence_loop_reverse(a: Tensor, b: Tensor) -> Tensor:
    """In place on ``b``: g_{T-1} = b_{T-1}, g_t = a_t g_{t+1} + b_t (``a`` has one step fewer)."""
    bs = b.unbind(0)
    for a_t, b_t, b_next in zip(reversed(a.unbind(0)), reversed(bs[:-1]), reversed(bs[1:])):
        b_t.addcmul_(a_t, b_next)
    return b


def _recurrence_blelloch(a: Tensor, b: Tensor) -> Tensor:
    """Work-efficient parallel form of :func:`_recurrence_loop` (out of place, autograd-safe).

    Combine neighbours (2i, 2i+1) into one step, solve the half-length recurrence for the
    odd positions recursively, then fill the even positions from their odd predecessors.
    """
    length = b.shape[0]
    if length == 1:
        return b
    half = length // 2
    evens = (length + 1) // 2
    # pair i covers positions (2i, 2i+1): h_{2i+1} = a_{2i} a_{2i-1} h_{2i-1} + (a_{2i} b_{2i} + b_{2i+1})
    b_pair = torch.addcmul(b[1 : 2 * half : 2], a[0 : 2 * half - 1 : 2], b[0 : 2 * half : 2])
    a_pair = a[2 : 2 * half - 1 : 2] * a[1 : 2 * half - 2 : 2]
    h_odd = _recurrence_blelloch(a_pair, b_pair)
    h_even = torch.cat([b[:1], torch.addcmul(b[2::2], a[1 : 2 * evens - 2 : 2], h_odd[: evens - 1])])
    h = torch.stack([h_even[:half], h_odd], dim=1).flatten(0, 1)
    return h if evens == half else torch.cat([h, h_even[half:]])


def _recurrence(a: Tensor, b: Tensor, method: str, reverse: bool = False) -> Tensor:
    if method == "loop":
        return (_recurrence_loop_reverse if reverse else _recurrence_loop)(a, b)
    if reverse:
        return _recurrence_blelloch(a.flip(0), b.flip(0)).flip(0)
    return _recurrence_blelloch(a, b)


def _bmv(m: Tensor, v: Tensor) -> Tensor:
    """(..., p, q) @ (..., q) -> (..., p) over flattened leading dims."""
    return torch.matmul(m, v.unsqueeze(-1)).squeeze(-1)


class _SelectiveScan(torch.autograd.Function):
    """Core scan y_t = Σ_n h_t C_t, with a chunked recomputing backward.

    Inputs in upstream layout: u, delta (b, d, L); A (d, N); B, C (b, N, L); h0 (b, d, N).
    Outputs y (b, d, L) and the last state (b, d, N). The work runs time-major (one step is
    one contiguous (b, d, N) slice); y and the input gradients come back in the memory
    layout of the caller's tensors, so the elementwise ops around the scan stay vectorised.
    Saved for backward: the inputs and the state before each chunk, so memory is
    O(L·b·(d+N) + chunk·b·d·N) instead of O(L·b·d·N).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, method, chunk_size):  # type: ignore[override]
        ut, dt, Bt, Ct = (_time_major(t) for t in (u, delta, B, C))
        length = ut.shape[0]
        y = torch.empty_like(u)
        starts = []
        h = h0
        for s in range(0, length, chunk_size):
            e = min(s + chunk_size, length)
            starts.append(h)
            H = _chunk_states(ut[s:e], dt[s:e], A, Bt[s:e], h, method)
            y[..., s:e] = _bmv(H, Ct[s:e]).permute(1, 2, 0)
            h = H[-1].clone()  # a view would keep the whole chunk buffer alive
        ctx.save_for_backward(ut, dt, A, Bt, Ct, *starts)
        ctx.method, ctx.chunk_size = method, chunk_size
        ctx.layouts = tuple(_dim_order(t) for t in (u, delta, B, C))
        return y, h

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_last):  # type: ignore[override]
        u, delta, A, B, C, *starts = ctx.saved_tensors
        method, chunk_size = ctx.method, ctx.chunk_size
        length = u.shape[0]
        dy = _time_major(dy)  # unused outputs arrive as zeros (grads are materialised)
        carry = dh_last.clone()
        du, ddelta, dB, dC = (torch.empty_like(t) for t in (u, delta, B, C))
        dA = torch.zeros_like(A)
        for i in reversed(range(len(starts))):
            s = i * chunk_size
            e = min(s + chunk_size, length)
            h_prev = starts[i]
            dl, ul, Bl, Cl, dyl = delta[s:e], u[s:e], B[s:e], C[s:e], dy[s:e]
            a = torch.exp_(dl.unsqueeze(-1) * A)  # (T, b, d, N)
            H = _chunk_states(ul, dl, A, Bl, h_prev, method, a=a)
            # adjoint: g_t = dL/dh_t = dy_t C_t + a_{t+1} g_{t+1}; the chunk's tail gets the carry
            g = dyl.unsqueeze(-1) * Cl.unsqueeze(-2)
            g[-1] += carry
            g = _recurrence(a[1:], g, method, reverse=True)
            dC[s:e] = torch.matmul(dyl.unsqueeze(-2), H).squeeze(-2)
            dB[s:e] = torch.matmul((dl * ul).unsqueeze(-2), g).squeeze(-2)
            gB = _bmv(g, Bl)  # Σ_n g B  (T, b, d)
            q = a.mul_(g)  # q = dL/d(ΔA) = g ⊙ a ⊙ h_{t-1}, in a's buffer
            carry = q[0].clone()  # dL/dh_{s-1} = a_s g_s
            q[1:] *= H[:-1]
            q[0] *= h_prev
            ddelta[s:e] = torch.einsum("tbdn,dn->tbd", q, A).addcmul_(ul, gB)
            du[s:e] = dl * gB
            dA += (q * dl.unsqueeze(-1)).sum((0, 1))
        du, ddelta, dB, dC = (_from_time_major(g, order) for g, order in zip((du, ddelta, dB, dC), ctx.layouts))
        return du, ddelta, dA, dB, dC, carry, None, None


def _time_major(x: Tensor) -> Tensor:
    """(b, c, L) -> contiguous (L, b, c)."""
    return x.permute(2, 0, 1).contiguous()


def _dim_order(x: Tensor) -> list[int]:
    """x's dims from the outermost in memory to the innermost."""
    return sorted(range(x.dim()), key=lambda i: -x.stride(i))


def _from_time_major(x: Tensor, order: list[int]) -> Tensor:
    """Time-major (L, b, c) back to (b, c, L), laid out in memory in ``order``."""
    y = x.permute(1, 2, 0)
    out = y.new_empty([y.shape[i] for i in order]).permute(*sorted(range(3), key=order.__getitem__))
    return out.copy_(y)


def _chunk_states(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, h_prev: Tensor, method: str, a: Tensor | None = None) -> Tensor:
    """States h_s..h_{e-1} (T, b, d, N) of one chunk, starting from h_{s-1} = ``h_prev``."""
    if a is None:
        a = torch.exp_(delta.unsqueeze(-1) * A)
    b = (delta * u).unsqueeze(-1) * B.unsqueeze(-2)
    b[0].addcmul_(a[0], h_prev)
    return _recurrence(a[1:], b, method)
