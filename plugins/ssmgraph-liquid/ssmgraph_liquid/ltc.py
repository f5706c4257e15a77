"""``mix.ltc``: the liquid time-constant (LTC) cell of Hasani et al. 2021, as ncps implements it.

Neuron potentials v follow x' = −[1/τ + f(x, I)]⊙x + f(x, I)⊙A, solved per input by the
fused semi-implicit Euler step of ncps's ``LTCCell`` with ``ode_unfolds`` sub-steps of length
Δ = Δt/ode_unfolds (elapsed time Δt = 1 between inputs)::

    v ← (c_m/Δ·v + g_leak·v_leak + Σ_j w_ij σ_ij(v_j) E_ij + Σ_k s_ik σ_ik(u_k) E_ik)
        / (c_m/Δ + g_leak + Σ_j w_ij σ_ij(v_j) + Σ_k s_ik σ_ik(u_k) + ε)

with σ(v) = sigmoid(σ·(v − μ)) per synapse. The wiring is ncps's ``FullyConnected``: every
neuron and every input feature synapses onto every neuron, and the (trainable) reversal
potentials E start at +1 with probability 2/3 and −1 otherwise, as its polarity draw from
[−1, 1, 1]. Positivity of w, s, c_m and g_leak is kept by softplus (ncps's
``implicit_param_constraints``): ncps's default clips them after each optimizer step, and a
block has no post-step hook. Inputs go through ncps's per-feature affine map; the output map
is a Linear from all ``units`` potentials back to the model width (ncps's per-motor-neuron
affine map, widened), so the block is a mixer B×L×D → B×L×D with state v (B, units). The
initialisation ranges are ncps's (for the softplus-constrained ones, of the constrained value).

Reference: Hasani, Lechner, Amini, Rus, Grosu, "Liquid Time-constant Networks", AAAI 2021;
mlech26l/ncps ``ncps/torch/ltc_cell.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ssmgraph
from ssmgraph.registry.specs import same_as_input

EPSILON = 1e-8


def _uniform(shape: tuple[int, ...], lo: float, hi: float) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape).uniform_(lo, hi))


def _polarity(shape: tuple[int, ...]) -> nn.Parameter:
    """Reversal potentials ±1, excitatory (+1) with probability 2/3 (ncps: choice of [-1, 1, 1])."""
    return nn.Parameter(torch.where(torch.rand(shape) < 2 / 3, 1.0, -1.0))


def _positive(shape: tuple[int, ...], lo: float, hi: float) -> nn.Parameter:
    """A parameter whose softplus is uniform in [lo, hi] at initialisation."""
    value = torch.empty(shape).uniform_(lo, hi)
    return nn.Parameter(value + torch.log(-torch.expm1(-value)))  # softplus⁻¹


class LTC(nn.Module):
    """The LTC cell unrolled over a sequence, its potentials projected back to the model width."""

    def __init__(self, dim: int, units: int, ode_unfolds: int):
        super().__init__()
        self.units, self.ode_unfolds = units, ode_unfolds
        self.input_w = nn.Parameter(torch.ones(dim))
        self.input_b = nn.Parameter(torch.zeros(dim))
        self.sensory_w = _positive((dim, units), 0.001, 1.0)
        self.sensory_mu = _uniform((dim, units), 0.3, 0.8)
        self.sensory_sigma = _uniform((dim, units), 3.0, 8.0)
        self.sensory_erev = _polarity((dim, units))
        self.w = _positive((units, units), 0.001, 1.0)
        self.mu = _uniform((units, units), 0.3, 0.8)
        self.sigma = _uniform((units, units), 3.0, 8.0)
        self.erev = _polarity((units, units))
        self.gleak = _positive((units,), 0.001, 1.0)
        self.vleak = _uniform((units,), -0.2, 0.2)
        self.cm = _positive((units,), 0.4, 0.6)
        self.out_proj = nn.Linear(units, dim)

    def cell(self, u: Tensor, v: Tensor) -> Tensor:
        """One input step: u (B, D), v (B, units) → the new potentials."""
        u = u * self.input_w + self.input_b
        s_act = F.softplus(self.sensory_w) * torch.sigmoid(self.sensory_sigma * (u.unsqueeze(-1) - self.sensory_mu))  # (B, D, U)
        s_num, s_den = (s_act * self.sensory_erev).sum(1), s_act.sum(1)
        cm_t = F.softplus(self.cm) * self.ode_unfolds  # c_m / (Δt / unfolds), Δt = 1
        gleak, w = F.softplus(self.gleak), F.softplus(self.w)
        for _ in range(self.ode_unfolds):
            act = w * torch.sigmoid(self.sigma * (v.unsqueeze(-1) - self.mu))  # (B, pre, post)
            num = cm_t * v + gleak * self.vleak + (act * self.erev).sum(1) + s_num
            den = cm_t + gleak + act.sum(1) + s_den
            v = num / (den + EPSILON)
        return v

    def forward(self, x: Tensor, *, state: Tensor | None = None, return_state: bool = False, mask: Tensor | None = None):
        v = self.init_state(x.shape[0], device=x.device, dtype=x.dtype) if state is None else state
        valid = None if mask is None else mask.bool()
        outs = []
        for t, u in enumerate(x.unbind(1)):
            new = self.cell(u, v)
            v = new if valid is None else torch.where(valid[:, t, None], new, v)  # padding keeps the state
            outs.append(v)
        y = self.out_proj(torch.stack(outs, 1))
        return (y, v) if return_state else y

    def init_state(self, batch: int, *, device=None, dtype=None) -> Tensor:
        return torch.zeros(batch, self.units, device=device or self.w.device, dtype=dtype or self.w.dtype)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        v = self.cell(x_t, state)
        return self.out_proj(v), v


def _build(in_types: list, *, units: int, ode_unfolds: int) -> LTC:
    return LTC(in_types[0].dim, units, ode_unfolds)


SPEC = ssmgraph.BlockSpec(
    name="mix.ltc",
    role="mix",
    doc="Liquid time-constant cell (fully connected wiring), fused semi-implicit Euler ODE solver",
    reference="Hasani et al. 2021, Liquid Time-constant Networks (AAAI 2021); mlech26l/ncps ncps/torch/ltc_cell.py, "
    "ncps/wirings/wirings.py (FullyConnected)",
    params=(
        ssmgraph.Param("units", int, 32, "number of neurons (the state size)", min=1),
        ssmgraph.Param("ode_unfolds", int, 6, "semi-implicit Euler sub-steps per input", min=1),
    ),
    factory=_build,
    shape=same_as_input,
    step=True,
    examples=({"units": 6, "ode_unfolds": 3},),
)
