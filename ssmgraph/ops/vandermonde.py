"""The convolution kernel of a diagonal SSM: Vandermonde products, computed over blocks of positions.

``vandermonde`` gives ``K_l = Σ_n v_n exp(log_a_n · l)`` (the S4D kernel) with O(N · block)
memory forward and backward; ``vandermonde_transpose`` gives ``Σ_l u_l exp(log_a_n · l)`` (the
state after a chunk).

Reference: Gu et al., "On the Parameterization and Initialization of Diagonal State Space
Models" (S4D, NeurIPS 2022); state-spaces/s4 ``models/s4/s4.py`` (``SSMKernelDiag``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def cexp(z: Tensor) -> Tensor:
    """``exp(z)`` for complex z as ``polar(exp(Re z), Im z)``: same values, 2-3x faster than
    the complex ``exp`` kernel on CPU."""
    return torch.polar(torch.exp(z.real), z.imag)


VANDERMONDE_CHUNK_ELEMENTS = 1 << 21
"""Entries of the Vandermonde matrix made at once (32 MB in complex64): the kernel is built
over blocks of positions of about this size, never the whole (..., N, L) matrix."""


def vandermonde(v: Tensor, log_a: Tensor, L: int) -> Tensor:
    """``Σ_n v[..., n] exp(log_a[..., n] * l)`` for l = 0..L-1 (complex, shape (..., L)).

    Computed over blocks of positions, forward and backward, so memory stays O(N · block)
    instead of the (..., N, L) matrix that the reference's "naive" backend materialises (and
    autograd would keep): at L = 16k and 256 channels that matrix alone is 1 GB.
    """
    return _Vandermonde.apply(v, log_a, L)


def _vandermonde_blocks(log_a: Tensor, L: int) -> Iterator[tuple[slice, Tensor, Tensor]]:
    """(slice of positions, positions, exp(log_a · positions)) for consecutive blocks."""
    block = max(1, VANDERMONDE_CHUNK_ELEMENTS // max(1, log_a.numel()))
    for start in range(0, L, block):
        end = min(start + block, L)
        pos = torch.arange(start, end, device=log_a.device, dtype=log_a.real.dtype)
        yield slice(start, end), pos, cexp(log_a.unsqueeze(-1) * pos)


class _Vandermonde(torch.autograd.Function):
    """y_l = Σ_n v_n z_n^l with z = exp(log_a), holomorphic in v and log_a, so (PyTorch's
    conjugate convention) grad v_n = Σ_l g_l conj(z_n^l) and grad log_a_n = conj(v_n) Σ_l
    l g_l conj(z_n^l), summed over the dimensions log_a was broadcast along."""

    @staticmethod
    def forward(ctx, v: Tensor, log_a: Tensor, L: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(v, log_a)
        ctx.L = L
        return torch.cat([torch.einsum("...n,...nl->...l", v, w) for _, _, w in _vandermonde_blocks(log_a, L)], dim=-1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        v, log_a = ctx.saved_tensors
        grad = grad.to(v.dtype if v.is_complex() else log_a.dtype)
        want_v, want_a = ctx.needs_input_grad[:2]
        acc_v = acc_a = 0
        for span, pos, w in _vandermonde_blocks(log_a, ctx.L):
            g, wc = grad[..., span], w.conj()
            if want_v:
                acc_v = acc_v + torch.einsum("...l,...nl->...n", g, wc)
            if want_a:
                acc_a = acc_a + torch.einsum("...l,...nl->...n", g * pos, wc)
        grad_v = (acc_v if v.is_complex() else acc_v.real).sum_to_size(v.shape) if want_v else None
        grad_log_a = (v.conj() * acc_a).sum_to_size(log_a.shape) if want_a else None
        return grad_v, grad_log_a, None


def vandermonde_transpose(u: Tensor, log_a: Tensor) -> Tensor:
    """``Σ_l u[..., l] exp(log_a[n] * l)``: ``u (..., H, L)`` real or complex, ``log_a (H, N)`` → (..., H, N)."""
    pos = torch.arange(u.shape[-1], device=log_a.device, dtype=log_a.real.dtype)
    return torch.einsum("...hl,hnl->...hn", u.to(log_a.dtype), cexp(log_a.unsqueeze(-1) * pos))
