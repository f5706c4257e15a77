"""The mixer contract of the three blocks, in float64: causality and step loop == forward."""

from __future__ import annotations

import pytest
import torch

from ssmgraph.registry.plugins import get_registry
from ssmgraph.registry.specs import TensorType

F64 = torch.float64
DIM, LENGTH = 3, 9

STEPPING = [
    ("mix.liquid_s4", {"d_state": 8, "l_max": 16}),
    ("mix.liquid_s4", {"d_state": 8, "l_max": 16, "liquid_degree": 4, "lcontract": "tanh", "channels": 2}),
    ("mix.ltc", {"units": 5, "ode_unfolds": 3}),
    ("mix.cfc", {"units": 5, "backbone_units": 7}),
    ("mix.cfc", {"units": 5, "backbone_units": 7, "mode": "no_gate", "backbone_layers": 2}),
    ("mix.cfc", {"units": 5, "backbone_units": 7, "mode": "pure", "backbone_layers": 0}),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(STEPPING)]


def build(name: str, args: dict):
    spec = get_registry().get(name)
    full = {**spec.defaults(), **args}
    caps = spec.capabilities(full)
    torch.manual_seed(0)
    return spec.factory([TensorType(("batch", "seq", DIM))], **full).double().eval(), caps


def step_loop(block, x: torch.Tensor) -> torch.Tensor:
    state = block.init_state(x.shape[0], dtype=x.dtype)
    ys = []
    for x_t in x.unbind(1):
        y_t, state = block.step(x_t, state)
        ys.append(y_t)
    return torch.stack(ys, 1)


@pytest.mark.parametrize("name,args", STEPPING, ids=IDS)
def test_step_loop_equals_forward_values_and_gradients(name, args):
    block, caps = build(name, args)
    assert caps.step and caps.causal
    x = torch.randn(2, LENGTH, DIM, dtype=F64, requires_grad=True)
    y, ys = block(x), step_loop(block, x)
    torch.testing.assert_close(ys, y, rtol=1e-9, atol=1e-11)
    params = [x, *block.parameters()]
    w = torch.randn_like(y)
    g_forward = torch.autograd.grad((y * w).sum(), params)
    g_step = torch.autograd.grad((ys * w).sum(), params)
    names = ["input", *(n for n, _ in block.named_parameters())]
    for n, a, b in zip(names, g_step, g_forward):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=lambda m, n=n: f"gradient of {n}: {m}")


@pytest.mark.parametrize("name,args", STEPPING, ids=IDS)
def test_perturbing_x_at_t_changes_no_earlier_output(name, args):
    block, _ = build(name, args)
    x = torch.randn(2, LENGTH, DIM, dtype=F64)
    y = block(x)
    for t in (0, 4, LENGTH - 1):
        x2 = x.clone()
        x2[:, t] += torch.randn(2, DIM, dtype=F64)
        y2 = block(x2)
        torch.testing.assert_close(y2[:, :t], y[:, :t], rtol=0, atol=1e-12)
        assert (y2[:, t] - y[:, t]).abs().max() > 1e-8  # the output at t does read x_t


def test_a_masked_sequence_then_a_step_equals_the_sequence_alone_then_a_step():
    block, _ = build("mix.liquid_s4", {"d_state": 8, "l_max": 16, "liquid_degree": 3})
    x = torch.randn(2, LENGTH, DIM, dtype=F64)
    lengths = [LENGTH, 4]
    mask = torch.arange(LENGTH)[None] < torch.tensor(lengths)[:, None]
    _, state = block(x, mask=mask, return_state=True)
    z = torch.randn(2, DIM, dtype=F64)
    z_next, _ = block.step(z, state)
    for b, n in enumerate(lengths):
        _, alone = block(x[b : b + 1, :n], return_state=True)
        torch.testing.assert_close(block.step(z[b : b + 1], alone)[0], z_next[b : b + 1], rtol=1e-9, atol=1e-11)
