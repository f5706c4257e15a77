"""Where and in which precision the SSM math runs: state and compute dtypes, the parameters' dtype, init on the host."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype of an SSM state for a requested dtype: float64/complex128 →
    complex128; anything else (float32, bfloat16, float16, complex64) → complex64 — states
    are never kept below single precision."""
    return torch.complex128 if dtype in (torch.float64, torch.complex128) else torch.complex64


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype recurrences and other precision-sensitive math run in for inputs of ``dtype``:
    at least fp32 (bfloat16 and float16 → float32; float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


def state_placement(ref: Tensor, device: torch.device | None, dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of a block's zero state (``init_state``): those asked for, else those of ``ref``."""
    return (ref.device if device is None else device), (ref.dtype if dtype is None else dtype)


@contextlib.contextmanager
def host_init() -> Iterator[torch.device]:
    """Run initialisation math (eigendecompositions, matrix powers) on the CPU, even under a
    ``torch.device("meta")`` context where it cannot run; yields the ambient device that
    the results go to, so a model built on the meta device allocates nothing of size."""
    device = torch.empty(0).device
    with torch.device("cpu"):
        yield device


def ssm_dtype(module: torch.nn.Module) -> torch.dtype:
    """The real dtype the SSM math of ``module`` runs in: that of its first floating parameter."""
    for t in module.parameters():
        if t.is_floating_point():
            return t.dtype
    for t in module.buffers():
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()
