"""Linear recurrences ``x_t = a_t * x_{t-1} + b_t``: a work-efficient parallel scan and its loop reference.

:func:`parallel_scan` is an odd/even (Blelloch-style) reduction, O(L) work and O(log L) depth,
with a reverse-scan backward; real or complex. S5 runs its recurrence through it (the torch
counterpart of ``jax.lax.associative_scan``).

References: Blelloch, "Prefix sums and their applications" (1990); alxndrTL/mamba.py
``pscan.py`` (reverse-scan backward).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _scan0(a: Tensor, b: Tensor) -> Tensor:
    """Inclusive scan along dim 0 of the operator (a_i, b_i)∘(a_j, b_j) = (a_j a_i, a_j b_i + b_j).

    Odd/even (Blelloch-style) reduction: combine neighbouring pairs, scan the half-length
    problem recursively, then fill in the even positions. O(L) work and O(log L) depth;
    out-of-place, so it is autograd- and compile-friendly.
    """
    length = b.shape[0]
    if length == 1:
        return b
    if length % 2:
        # Pad with the identity element (a=1, b=0); the padded output is dropped.
        a = torch.cat([a, torch.ones_like(a[:1])])
        b = torch.cat([b, torch.zeros_like(b[:1])])
    a_even, a_odd = a[0::2], a[1::2]
    b_even, b_odd = b[0::2], b[1::2]
    x_odd = _scan0(a_odd * a_even, a_odd * b_even + b_odd)  # x at positions 1, 3, 5, ...
    x_even = torch.cat([b_even[:1], a_even[1:] * x_odd[:-1] + b_even[1:]])  # x at 0, 2, 4, ...
    x = torch.stack([x_even, x_odd], dim=1).flatten(0, 1)
    return x[:length]


class _ParallelScan(torch.autograd.Function):
    """Scan along dim 0 with the reverse-scan backward (saves only ``a`` and ``x``).

    With g the gradient w.r.t. x: the adjoint recurrence is λ_t = g_t + conj(a_{t+1}) λ_{t+1},
    so db_t = λ_t, da_t = λ_t conj(x_{t-1}), dx0 = conj(a_0) λ_0 (PyTorch's conjugate
    Wirtinger convention, which reduces to the ordinary gradient for real tensors).
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, x0: Tensor) -> Tensor:  # type: ignore[override]
        b0 = torch.cat([b[:1] + a[:1] * x0.unsqueeze(0), b[1:]])
        x = _scan0(a, b0)
        ctx.save_for_backward(a, x, x0)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        a, x, x0 = ctx.saved_tensors
        a_next = torch.cat([a[1:], torch.zeros_like(a[:1])]).conj()
        lam = _scan0(a_next.flip(0), grad.flip(0)).flip(0)
        x_prev = torch.cat([x0.unsqueeze(0).expand_as(x[:1]), x[:-1]]).conj()
        return lam * x_prev, lam, a[0].conj() * lam[0]


def _prepare(a: Tensor, b: Tensor, dim: int, x0: Tensor | None) -> tuple[Tensor, Tensor, Tensor, int]:
    dtype = torch.promote_types(a.dtype, b.dtype)
    if x0 is not None:
        dtype = torch.promote_types(dtype, x0.dtype)
    a, b = torch.broadcast_tensors(a.to(dtype), b.to(dtype))
    dim = dim % b.dim()
    a, b = a.movedim(dim, 0), b.movedim(dim, 0)
    if x0 is None:
        x0 = torch.zeros_like(b[0])
    else:
        x0 = x0.to(dtype).expand_as(b[0])
    return a, b, x0, dim


def parallel_scan(a: Tensor, b: Tensor, dim: int = 1, x0: Tensor | None = None) -> Tensor:
    """Solve ``x_t = a_t * x_{t-1} + b_t`` along ``dim`` for all t, with ``x_{-1} = x0`` (zeros).

    ``a`` and ``b`` broadcast against each other (e.g. a time-invariant ``a`` of shape
    (1, 1, N) with ``b`` of shape (B, L, N)); real or complex. ``x0`` has the shape of ``b``
    without ``dim`` (or broadcasts to it). Returns ``x`` with the broadcast shape, ``dim``
    in place. Work-efficient (O(L) work, O(log L) depth) with a reverse-scan backward.
    """
    a, b, x0, dim = _prepare(a, b, dim, x0)
    return _ParallelScan.apply(a, b, x0).movedim(0, dim)


def sequential_scan(a: Tensor, b: Tensor, dim: int = 1, x0: Tensor | None = None) -> Tensor:
    """Reference for :func:`parallel_scan`: the plain loop, same arguments and result.

    Slices are taken once with ``unbind`` (slicing inside the loop makes autograd O(L²)).
    """
    a, b, x0, dim = _prepare(a, b, dim, x0)
    x = x0
    out = []
    for a_t, b_t in zip(a.unbind(0), b.unbind(0)):
        x = a_t * x + b_t
        out.append(x)
    return torch.stack(out, dim=dim)
