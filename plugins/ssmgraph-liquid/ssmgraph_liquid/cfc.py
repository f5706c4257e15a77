"""``mix.cfc``: the closed-form continuous-time (CfC) cell of Hasani et al. 2022, as ncps has it.

A backbone reads the input and the hidden state, z = LeCunTanh(W [u, h]) (``backbone_layers``
such layers, 1.7159·tanh(0.666·x)), and the new state is, with elapsed time t = 1:

- ``default`` (gated): h' = f1 ⊙ (1 − λ) + λ ⊙ f2, f1 = tanh(W1 z), f2 = tanh(W2 z),
  λ = sigmoid(W_a z · t + W_b z);
- ``no_gate``: h' = f1 + λ ⊙ f2;
- ``pure``: h' = −A ⊙ exp(−t (|w_τ| + |f1|)) ⊙ f1 + A, f1 = W1 z (the closed-form solution).

Every two-dimensional weight of the cell starts Xavier-uniform, as in ncps — including the
``pure`` mode's w_τ and A, which ncps declares of shape (1, units) (so they do not start at
their nominal 0 and 1). The ``units`` hidden state goes through a Linear back to the model
width (ncps's optional output projection): a mixer B×L×D → B×L×D with state h (B, units).

Reference: Hasani, Lechner, Amini, et al., "Closed-form continuous-time neural networks",
Nature Machine Intelligence 2022; mlech26l/ncps ``ncps/torch/cfc_cell.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import ssmgraph
from ssmgraph.registry.specs import same_as_input

MODES = ("default", "no_gate", "pure")
ELAPSED = 1.0
"""The elapsed time t between inputs: regularly sampled sequences, ncps's default."""


class LeCunTanh(nn.Module):
    """LeCun's scaled tanh, 1.7159·tanh(0.666·x): the CfC backbone's default activation."""

    def forward(self, x: Tensor) -> Tensor:
        return 1.7159 * torch.tanh(0.666 * x)


class CfC(nn.Module):
    """The CfC cell unrolled over a sequence, its hidden state projected back to the model width."""

    def __init__(self, dim: int, units: int, backbone_units: int, backbone_layers: int, mode: str):
        super().__init__()
        self.units, self.mode = units, mode
        layers: list[nn.Module] = []
        width = dim + units
        for _ in range(backbone_layers):
            layers += [nn.Linear(width, backbone_units), LeCunTanh()]
            width = backbone_units
        self.backbone = nn.Sequential(*layers)
        self.ff1 = nn.Linear(width, units)
        if mode == "pure":
            self.w_tau = nn.Parameter(torch.zeros(1, units))
            self.A = nn.Parameter(torch.ones(1, units))
        else:
            self.ff2 = nn.Linear(width, units)
            self.time_a = nn.Linear(width, units)
            self.time_b = nn.Linear(width, units)
        self.out_proj = nn.Linear(units, dim)
        for name, p in self.named_parameters():
            if p.dim() == 2 and not name.startswith("out_proj"):
                nn.init.xavier_uniform_(p)

    def cell(self, u: Tensor, h: Tensor) -> Tensor:
        """One input step: u (B, D), h (B, units) → the new hidden state."""
        z = self.backbone(torch.cat([u, h], -1))
        if self.mode == "pure":
            f1 = self.ff1(z)
            return -self.A * torch.exp(-ELAPSED * (self.w_tau.abs() + f1.abs())) * f1 + self.A
        f1, f2 = torch.tanh(self.ff1(z)), torch.tanh(self.ff2(z))
        gate = torch.sigmoid(self.time_a(z) * ELAPSED + self.time_b(z))
        return f1 + gate * f2 if self.mode == "no_gate" else f1 * (1 - gate) + gate * f2

    def forward(self, x: Tensor, *, state: Tensor | None = None, return_state: bool = False, mask: Tensor | None = None):
        h = self.init_state(x.shape[0], device=x.device, dtype=x.dtype) if state is None else state
        valid = None if mask is None else mask.bool()
        outs = []
        for t, u in enumerate(x.unbind(1)):
            new = self.cell(u, h)
            h = new if valid is None else torch.where(valid[:, t, None], new, h)  # padding keeps the state
            outs.append(h)
        y = self.out_proj(torch.stack(outs, 1))
        return (y, h) if return_state else y

    def init_state(self, batch: int, *, device=None, dtype=None) -> Tensor:
        ref = self.out_proj.weight
        return torch.zeros(batch, self.units, device=device or ref.device, dtype=dtype or ref.dtype)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        h = self.cell(x_t, state)
        return self.out_proj(h), h


def _build(in_types: list, *, units: int, backbone_units: int, backbone_layers: int, mode: str) -> CfC:
    return CfC(in_types[0].dim, units, backbone_units, backbone_layers, mode)


SPEC = ssmgraph.BlockSpec(
    name="mix.cfc",
    role="mix",
    doc="Closed-form continuous-time (CfC) cell: backbone, two tanh heads and a time gate",
    reference="Hasani et al. 2022, Closed-form continuous-time neural networks; mlech26l/ncps cfc_cell.py",
    params=(
        ssmgraph.Param("units", int, 32, "hidden state size", min=1),
        ssmgraph.Param("backbone_units", int, 128, "width of the backbone layers", min=1),
        ssmgraph.Param("backbone_layers", int, 1, "backbone layers (Linear + LeCun tanh)", min=0),
        ssmgraph.Param("mode", str, "default", "gated 'default', 'no_gate', or the closed-form 'pure'", choices=MODES),
    ),
    factory=_build,
    shape=same_as_input,
    step=True,
    examples=(
        {"units": 6, "backbone_units": 10},
        {"units": 6, "backbone_units": 10, "mode": "no_gate", "backbone_layers": 2},
        {"units": 6, "backbone_units": 10, "mode": "pure"},
    ),
)
