"""Shared fixtures for the block tests: build a block straight from its spec.

Helpers are fixtures (not imports) so the tests work under any pytest import mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from ssmgraph.registry.specs import BlockSpec, TensorType


def _types(in_types: tuple[TensorType | int, ...]) -> list[TensorType]:
    return [TensorType(("batch", "seq", t)) if isinstance(t, int) else t for t in in_types]


@pytest.fixture
def build() -> Callable[..., nn.Module]:
    """``build(spec, *inputs, **args)``: ``spec.factory`` with defaults filled in.

    An int input stands for a float (batch, seq, D) input.
    """

    def _build(spec: BlockSpec, *in_types: TensorType | int, **overrides: Any) -> nn.Module:
        return spec.factory(_types(in_types), **{**spec.defaults(), **overrides})

    return _build


@pytest.fixture
def out_type() -> Callable[..., TensorType]:
    """``out_type(spec, *inputs, **args)``: ``spec.shape`` with defaults filled in."""

    def _out_type(spec: BlockSpec, *in_types: TensorType | int, **overrides: Any) -> TensorType:
        return spec.shape(_types(in_types), **{**spec.defaults(), **overrides})

    return _out_type


@pytest.fixture
def grads_reach_all() -> Callable[[nn.Module], None]:
    """Assert every parameter got a finite, non-zero gradient from the last backward pass."""

    def _check(module: nn.Module) -> None:
        for name, p in module.named_parameters():
            assert p.grad is not None, f"no gradient reached {name}"
            assert torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, f"zero gradient at {name}"

    return _check


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
