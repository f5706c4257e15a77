"""``nn.Linear`` whose fp32 CPU matmuls go through oneDNN where that is faster.

PyTorch runs an fp32 ``nn.Linear`` on the CPU through MKL's sgemm. oneDNN, which PyTorch also
ships, picks its kernels from the CPU's instruction set; on the benchmark machine (AMD EPYC,
AVX-512) it computes the forward product and the input gradient a few percent faster than MKL
(3% of a GPT-2 training step; ``docs/performance.md``), while MKL stays as fast for the weight
gradient, which is left to it. The arithmetic is the same (fp32 products and sums, in another order): outputs agree with
``F.linear`` to rounding.

The fast path applies to fp32 tensors of at least 64 rows on x86-64 CPUs, in eager mode,
when PyTorch is built with oneDNN; anything else (CUDA, other dtypes, autocast, ``torch.compile``,
which packs its own oneDNN kernels, a double backward) runs ``F.linear``.
``SSMGRAPH_ONEDNN_LINEAR=0`` turns it off for the process, ``with onednn_linear(False):`` for a
block of code (to compare the two, or to get ``F.linear``'s exact rounding). The class keeps
``nn.Linear``'s parameters, state dict and ``isinstance``, so plugins can use it in place of
``nn.Linear``.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _onednn_op() -> Any:
    """The oneDNN linear op where it is to be used: x86-64 CPUs (where it was measured; Arm
    builds keep their own BLAS), a PyTorch built with oneDNN, the switch not off."""
    if (
        os.environ.get("SSMGRAPH_ONEDNN_LINEAR", "1") == "0"
        or platform.machine().lower() not in ("x86_64", "amd64")
        or not torch.backends.mkldnn.is_available()
    ):
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):  # a build without the op
        return None


_ONEDNN_LINEAR = _onednn_op()
_enabled = True
_MIN_ROWS = 64
"""Fewer rows (a decoding step) stay with ``F.linear``: oneDNN's per-call cost outweighs its
faster kernel there (through a 256 → 256 layer it takes 2.5× as long for one row, 1.6× for 16;
at 64 rows the two are even)."""


@contextmanager
def onednn_linear(enabled: bool) -> Iterator[None]:
    """Inside the block, :func:`linear` takes the oneDNN path where it applies (``True``) or
    always ``F.linear`` (``False``). A process-wide switch, not a per-thread one; a backward
    run after the block still computes what its forward chose."""
    global _enabled
    before, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = before


def _onednn(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x @ weightᵀ (+ bias) for 2-D ``x`` (weight may be a transposed view)."""
    return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(rows, weight)
        ctx.has_bias = bias is not None
        return _onednn(rows, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        rows, weight = ctx.saved_tensors
        grad_rows = grad.reshape(-1, grad.shape[-1])
        need_x, need_w, need_b = ctx.needs_input_grad
        differentiable = torch.is_grad_enabled()  # create_graph=True: stay with ops autograd can differentiate
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = grad_rows @ weight if differentiable else _onednn(grad_rows, weight.t(), None)
            grad_x = grad_x.view(*grad.shape[:-1], weight.shape[1])
        if need_w:
            grad_w = grad_rows.t() @ rows
        if need_b and ctx.has_bias:
            grad_b = grad_rows.sum(0)
        return grad_x, grad_w, grad_b


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear``, through oneDNN for fp32 CPU tensors in eager mode (see the module doc)."""
    if (
        _ONEDNN_LINEAR is None
        or not _enabled
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or x.numel() < _MIN_ROWS * max(x.shape[-1], 1)
        or torch.compiler.is_compiling()
        or _cpu_autocast()
    ):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return _OneDNNLinear.apply(x, weight, bias)
    return _onednn(x.reshape(-1, x.shape[-1]), weight, bias).view(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` computed by :func:`linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
