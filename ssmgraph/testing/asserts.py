"""What the checks assert with: tensors and recurrent states compared within a tolerance, a
step loop, and :class:`SkipCheck` for a check that does not apply."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn


class SkipCheck(Exception):
    """Raised by a check that does not apply to the configured block; the message says why."""


def close(a: Tensor, b: Tensor, what: str, rtol: float = 1e-6) -> None:
    if a.shape != b.shape:
        raise AssertionError(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.is_complex() or b.is_complex():
        a, b = torch.view_as_real(a.resolve_conj()), torch.view_as_real(b.resolve_conj())
    if a.numel() == 0:
        return
    a, b = a.double(), b.double()
    scale = b.abs().max().clamp_min(1e-12)
    err = ((a - b).abs().max() / scale).item()
    if not err <= rtol:
        raise AssertionError(f"{what}: relative difference {err:.3g} exceeds {rtol:g}")


def flat(state: Any) -> list[Tensor]:
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, (tuple, list)):
        return [t for s in state for t in flat(s)]
    if isinstance(state, Mapping):
        return [t for k in sorted(state) for t in flat(state[k])]
    if state is None:
        return []
    raise AssertionError(f"a state holds {type(state).__name__}; states are tensors, tuples, lists or dicts of them")


def close_states(a: Any, b: Any, what_a: str, what_b: str) -> None:
    """Two states part by part; a part one of them lacks is a failure, not a skipped part."""
    parts_a, parts_b = flat(a), flat(b)
    if len(parts_a) != len(parts_b):
        raise AssertionError(f"the final state has {len(parts_a)} parts after {what_a} but {len(parts_b)} after {what_b}")
    for i, (u, v) in enumerate(zip(parts_a, parts_b)):
        close(u, v, f"final state part {i}, {what_a} vs {what_b}")


def step_loop(module: nn.Module, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
    if state is None:
        state = module.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    ys = []
    for x_t in x.unbind(1):
        y_t, state = module.step(x_t, state)
        ys.append(y_t)
    return torch.stack(ys, 1), state
