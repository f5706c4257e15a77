"""The SSM parameters of a block: how a spec declares and checks them, how a module registers them.

Every SSM block (S4, S4D, S5, H3, the gated MLP, Mamba, and plugins such as Liquid-S4) takes a
state size ``d_state``, a log-uniform range ``[dt_min, dt_max]`` of initial step sizes Δ, and
a learning rate ``ssm_lr`` for its SSM tensors, which train without weight decay (the
references' ``register``). :func:`ssm_params` declares the four once, with one type and range
for every block; a block passes its own default state size and one-line docs where they differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from ssmgraph.blocks.optim_hints import mark_optim
from ssmgraph.registry.specs import Param, ShapeError

SSM_PARAM_DOCS: Mapping[str, str] = {
    "d_state": "state size N (N/2 complex conjugate-pair modes are stored)",
    "dt_min": "smallest initial step size Δ (log-uniform init)",
    "dt_max": "largest initial step size Δ (log-uniform init)",
    "ssm_lr": "learning rate of the SSM parameters (Δ, A, B), no weight decay; 0 freezes them",
}
"""The S4 family's docs of the four parameters (what ``ssmgraph blocks mix.s4`` shows)."""


class SSMParams(NamedTuple):
    """The four SSM parameters of a spec. A tuple, so ``*ssm_params()`` lists all four in a row;
    a spec that interleaves them with its own parameters places each by name."""

    d_state: Param
    dt_min: Param
    dt_max: Param
    ssm_lr: Param


def ssm_params(
    d_state: int = 64, *, ssm_lr: float | None = 1e-3, min_state: int = 2, docs: Mapping[str, str] | None = None
) -> SSMParams:
    """The SSM parameters with a block's default state size, ``ssm_lr`` (None: nullable, the
    optimizer group's rate), smallest state size, and docs replacing :data:`SSM_PARAM_DOCS` by name."""
    unknown = sorted(set(docs or {}) - set(SSM_PARAM_DOCS))
    if unknown:
        raise TypeError(f"ssm_params() has no parameters {unknown}; it declares {sorted(SSM_PARAM_DOCS)}")
    doc = {**SSM_PARAM_DOCS, **(docs or {})}
    return SSMParams(
        Param("d_state", int, d_state, doc["d_state"], min=min_state),
        Param("dt_min", float, 1e-3, doc["dt_min"], min=0.0),
        Param("dt_max", float, 1e-1, doc["dt_max"], min=0.0),
        Param("ssm_lr", float, ssm_lr, doc["ssm_lr"], min=0.0, nullable=ssm_lr is None),
    )


def check_dt_range(dt_min: float, dt_max: float) -> None:
    """The step-size range must be positive (Δ is drawn log-uniformly) and ordered."""
    if dt_min <= 0:
        raise ShapeError(f"dt_min must be positive (Δ is drawn log-uniformly), got {dt_min:g}")
    if dt_min > dt_max:
        raise ShapeError(f"dt_min {dt_min:g} is larger than dt_max {dt_max:g}")


def check_ssm_args(d_state: int, dt_min: float, dt_max: float) -> None:
    """The checks of a conjugate-pair SSM's shape rule: an even state size and a valid Δ range."""
    if d_state % 2:
        raise ShapeError(f"d_state {d_state} must be even (N/2 conjugate-pair modes are stored)")
    check_dt_range(dt_min, dt_max)


def register_ssm_param(module: torch.nn.Module, name: str, tensor: Tensor, lr: float) -> None:
    """Register an SSM tensor (A, Δ, B, P) as the references do: a parameter with its own
    learning rate and no weight decay, or a frozen buffer when ``lr == 0``."""
    if lr == 0.0:
        module.register_buffer(name, tensor)
    else:
        module.register_parameter(name, mark_optim(torch.nn.Parameter(tensor), lr=lr, weight_decay=0.0))
