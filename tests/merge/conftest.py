"""Shared fixtures for the permutation tests (spaces, applying, matching, the recipe's permute step).

Helpers are fixtures (not imports) so the tests work under any pytest import mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import yaml

import ssmgraph
from ssmgraph.blueprint import builtin_blueprints
from ssmgraph.graph.compile import example_inputs
from ssmgraph.graph.perm_apply import random_permutations
from ssmgraph.graph.perm_spaces import Space

SMALL = {
    "vocab": 11,
    "d_model": 8,
    "heads": 4,
    "kv_heads": 2,
    "max_len": 16,
    "hidden": 12,
    "d_common": 4,
    "layers": 3,
    "d_state": 8,
}
"""Small values for the shipped blueprints' params (each blueprint takes those it has)."""


def _perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Noise on every parameter and buffer, so that no two units are alike by initialisation
    (Mamba's A_log rows, S4D's real parts): a space missing an axis then changes outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.is_floating_point():
                t.add_(0.05 * torch.randn(t.shape, generator=gen, dtype=t.dtype))
    return module


def _deranged(spaces: list[Space], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random permutations that move every unit's neighbour at least (never the identity)."""
    gen = torch.Generator().manual_seed(seed)
    perms = random_permutations(spaces, gen)
    return {k: p if not torch.equal(p, torch.arange(len(p))) else p.roll(1) for k, p in perms.items()}


def _outputs_diff(a: Any, b: Any) -> float:
    if isinstance(a, dict):
        return max(_outputs_diff(a[k], b[k]) for k in a)
    return (a - b).abs().max().item()


def _small_blueprint(name: str) -> torch.nn.Module:
    params = yaml.safe_load(builtin_blueprints()[name].read_text(encoding="utf-8"))["params"]
    torch.manual_seed(0)
    return ssmgraph.build(name, **{k: v for k, v in SMALL.items() if k in params}).to(torch.float64).eval()


def _float64_inputs(model: Any) -> list[torch.Tensor]:
    return [
        x.to(torch.float64) if x.is_floating_point() else x
        for x in example_inputs(model, generator=torch.Generator().manual_seed(1))
    ]


@pytest.fixture
def small_params() -> dict[str, int]:
    """:data:`SMALL`."""
    return dict(SMALL)


@pytest.fixture
def perturbed() -> Callable[..., torch.nn.Module]:
    """``perturbed(module, seed=0)``: the module, with a little noise on every parameter and buffer."""
    return _perturbed


@pytest.fixture
def deranged() -> Callable[..., dict[str, torch.Tensor]]:
    """``deranged(spaces, seed=0)``: a random permutation of every space, never the identity."""
    return _deranged


@pytest.fixture
def outputs_diff() -> Callable[[Any, Any], float]:
    """``outputs_diff(a, b)``: the largest absolute difference of two outputs (or dicts of them)."""
    return _outputs_diff


@pytest.fixture
def small_blueprint() -> Callable[[str], torch.nn.Module]:
    """``small_blueprint(name)``: a shipped blueprint at :data:`SMALL` sizes, float64, seed 0, eval mode."""
    return _small_blueprint


@pytest.fixture
def float64_inputs() -> Callable[[Any], list[torch.Tensor]]:
    """``float64_inputs(model)``: example inputs for ``model`` (seed 1), float ones in float64."""
    return _float64_inputs
