"""A third-party block, written against ssmgraph's public API only.

``mix.ema``: a per-channel exponential moving average, y_t = a·y_{t-1} + (1 - a)·x_t with a
learnable decay a = sigmoid(logit) — the simplest linear recurrence, with a recurrent step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

import ssmgraph
from ssmgraph import BlockSpec, Param
from ssmgraph.registry.specs import same_as_input


class EMA(nn.Module):
    def __init__(self, dim: int, init_decay: float):
        super().__init__()
        self.logit = nn.Parameter(torch.full((dim,), math.log(init_decay / (1 - init_decay))))

    def forward(self, x: Tensor, *, state: Tensor | None = None, return_state: bool = False, mask: Tensor | None = None):
        a = torch.sigmoid(self.logit)
        y = state if state is not None else x.new_zeros(x.shape[0], x.shape[2])
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        outs = []
        for x_t, v_t in zip(x.unbind(1), valid.unbind(1)):
            y = torch.where(v_t[:, None], a * y + (1 - a) * x_t, y)  # padding keeps the state
            outs.append(y)
        out = torch.stack(outs, 1)
        return (out, out[:, -1]) if return_state else out

    def init_state(self, batch: int, *, device=None, dtype=None) -> Tensor:
        return torch.zeros(batch, self.logit.shape[0], device=device, dtype=dtype or self.logit.dtype)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        a = torch.sigmoid(self.logit)
        y = a * state + (1 - a) * x_t
        return y, y


EMA_SPEC = BlockSpec(
    name="mix.ema",
    role="mix",
    doc="Per-channel exponential moving average with a learnable decay.",
    params=(Param("init_decay", float, 0.9, "initial decay a in (0, 1)", min=0.001, max=0.999),),
    factory=lambda in_types, *, init_decay: EMA(in_types[0].dim, init_decay),
    shape=same_as_input,
    step=True,
    reference="exponential smoothing (Brown 1956); an example plugin",
)


@ssmgraph.hookimpl
def ssmgraph_blocks():
    return [EMA_SPEC]
