"""mix.liquid_s4 against independent computations of its definition."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ssmgraph.registry.plugins import get_registry
from ssmgraph.registry.specs import TensorType

F64, C128 = torch.float64, torch.complex128
DIM = 4


def build(name: str, **args):
    spec = get_registry().get(name)
    full = {**spec.defaults(), "d_state": 8, "l_max": 32, **args}
    return spec.factory([TensorType(("batch", "seq", DIM))], **full).double().eval()


def closed_form_coefficients(core, degree: int) -> torch.Tensor:
    """C·B̄^(p) from the closed form of the reference's cumulative update, B̄^(p) = B̄ s^(2^(p−1) − 1).

    B̄ = ΔB / (1 − ΔΛ/2) per stored mode; s = 1ᵀB̄ and C·B̄ summed over both halves of every
    conjugate pair are twice the real parts of the sums over the stored half."""
    dt = torch.exp(core.log_dt.detach())[:, None].to(C128)
    lam = torch.complex(-torch.exp(core.log_A_real.detach()), -core.A_imag.detach()).to(C128)
    b = torch.view_as_complex(core.B.detach().contiguous()).to(C128)
    c = torch.view_as_complex(core.C.detach().contiguous()).to(C128)
    b_bar = dt * b / (1 - dt * lam / 2)  # (H, N/2)
    s = 2 * b_bar.sum(-1).real  # (H,)
    cb = 2 * (c * b_bar).sum(-1).real  # (c', H)
    return torch.stack([cb * s ** (2 ** (p - 1) - 1) for p in range(2, degree + 1)])


def test_no_liquid_terms_is_plain_s4_with_the_same_weights():
    spec = get_registry().get("mix.s4")
    assert spec.plugin == "ssmgraph"  # the core registry's S4
    torch.manual_seed(0)
    liquid = build("mix.liquid_s4", liquid_degree=1)
    s4 = build("mix.s4")
    s4.load_state_dict({k.replace("ssm.core.", "ssm."): v for k, v in liquid.state_dict().items()})
    x = torch.randn(2, 20, DIM, dtype=F64)
    torch.testing.assert_close(liquid(x), s4(x), rtol=0, atol=0)


@pytest.mark.parametrize("degree,lcontract", [(2, None), (3, "tanh"), (4, "lecun")])
def test_causal_liquid_terms_equal_explicit_loops(degree, lcontract):
    torch.manual_seed(1)
    ssm = build("mix.liquid_s4", liquid_degree=degree, lcontract=lcontract, channels=2).ssm
    contract = {None: lambda v: v, "tanh": torch.tanh, "lecun": lambda v: 1.7159 * torch.tanh(0.666 * v)}[lcontract]
    u = torch.randn(2, DIM, 11, dtype=F64)
    y_liquid, _ = ssm(u)
    y_plain, _ = ssm.core(u)
    coeffs = closed_form_coefficients(ssm.core, degree)  # (degree − 1, c, H)
    expected = torch.zeros_like(y_plain)
    for t in range(u.shape[-1]):
        for p in range(2, degree + 1):
            prod = torch.ones(2, DIM, dtype=F64)
            for k in range(p):
                prod = prod * (u[..., t - k] if t - k >= 0 else 0.0)
            expected[..., t] += coeffs[p - 2][None] * contract(prod)[:, None]
    torch.testing.assert_close(y_liquid - y_plain, expected, rtol=1e-10, atol=1e-12)


def flipped_all_combinations(u: torch.Tensor, p: int) -> torch.Tensor:
    """The reference's u_corr^(p) for ``u (..., L)``, written out: combinations of the last n positions."""
    L = u.shape[-1]
    n = p
    while math.comb(n, p) < L:
        n += 1
    combos = list(itertools.combinations(range(max(0, L - n), L), p))[-L:]
    seq = torch.zeros_like(u)
    for j, combo in enumerate(combos):
        seq[..., j] = math.prod(u[..., i] for i in combo)
    return seq.flip(-1)


def test_reference_pb_is_the_flipped_all_combinations_sequence():
    torch.manual_seed(2)
    ssm = build("mix.liquid_s4", variant="reference_pb", liquid_degree=3).ssm
    u = torch.randn(1, DIM, 7, dtype=F64)
    y_liquid, _ = ssm(u)
    y_plain, _ = ssm.core(u)
    coeffs = closed_form_coefficients(ssm.core, 3)
    expected = sum(coeffs[p - 2][None, :, :, None] * flipped_all_combinations(u, p)[:, None] for p in (2, 3))
    torch.testing.assert_close(y_liquid - y_plain, expected, rtol=1e-10, atol=1e-12)


def test_reference_pb_is_declared_non_causal_and_reads_the_future():
    spec = get_registry().get("mix.liquid_s4")
    caps = spec.capabilities({**spec.defaults(), "variant": "reference_pb"})
    assert not caps.causal and caps.bidirectional and not caps.step
    torch.manual_seed(3)
    block = build("mix.liquid_s4", variant="reference_pb")
    x = torch.randn(1, 7, DIM, dtype=F64)
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert (block(x2)[:, 0] - block(x)[:, 0]).abs().max() > 1e-6  # the first output reads the last input


def test_reference_pb_with_padding_treats_each_sequence_alone():
    torch.manual_seed(4)
    block = build("mix.liquid_s4", variant="reference_pb", liquid_degree=3)
    x = torch.randn(3, 9, DIM, dtype=F64)
    lengths = [9, 5, 2]
    mask = torch.arange(9)[None] < torch.tensor(lengths)[:, None]
    y = block(x, mask=mask)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(y[b, :n], block(x[b : b + 1, :n])[0], rtol=1e-10, atol=1e-12)


def test_chunks_longer_than_l_max_carry_the_liquid_history():
    torch.manual_seed(5)
    block = build("mix.liquid_s4", liquid_degree=3, l_max=8)
    x = torch.randn(2, 21, DIM, dtype=F64)
    y, state = block(x, return_state=True)
    y1, s1 = block(x[:, :9], return_state=True)
    y2, s2 = block(x[:, 9:], state=s1, return_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(s2[1], state[1])
    torch.testing.assert_close(s2[1], x[:, -2:].transpose(1, 2))  # the last p − 1 inputs
