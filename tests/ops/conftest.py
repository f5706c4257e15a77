"""Shared fixtures for the math tests.

Helpers are fixtures (not imports) so the tests work under any pytest import mode.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


@pytest.fixture
def rel_err() -> Callable[[torch.Tensor, torch.Tensor], float]:
    """``rel_err(a, b)``: the largest deviation of ``a`` from ``b``, relative to ``b``'s largest entry."""

    def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()

    return _rel_err


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
