"""mix.liquid_s4 against independent computations of its definition."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ssmgraph.registry.plugins import get_registry
from ssmgraph.registry.specs import TensorType

F64 = torch.float64
DIM = 4


def build(name: str, **args):
    spec = get_registry().get(name)
    return spec.factory([TensorType(("batch", "seq", DIM))], **{**spec.defaults(), "d_state": 8, "l_max": 32, **args}).double().eval()


def coefficients_by_hand(ssm, degree: int) -> torch.Tensor:
    """C·B̄^(p) with B̄ = ΔB / (1 − ΔΛ/2) over the full conjugate-pair state, loops over p."""
    dt = torch.exp(ssm.core.log_dt)[:, None].to(torch.complex128)
    lam = torch.complex(-torch.exp(ssm.core.log_A_real), -ssm.core.A_imag).to(torch.complex128)
    b = torch.view_as_complex(ssm.core.B.contiguous()).to(torch.complex128)
    c = torch.view_as_complex(ssm.core.C.contiguous()).to(torch.complex128)
    b_bar = dt * b / (1 - dt * lam / 2)
    b_full = torch.cat([b_bar, b_bar.conj()], -1)
    c_full = torch.cat([c, c.conj()], -1)
    out, bp = [], b_full
    for _ in range(2, degree + 1):
        bp = bp * bp.sum(-1, keepdim=True)
        out.append((c_full * bp).sum(-1).real)
    return torch.stack(out)


def test_degree_one_is_plain_s4_with_the_same_weights():
    torch.manual_seed(0)
    liquid = build("mix.liquid_s4", liquid_degree=1)
    s4 = build("mix.s4")
    s4.load_state_dict({k.replace("ssm.core.", "ssm."): v for k, v in liquid.state_dict().items()})
    x = torch.randn(2, 20, DIM, dtype=F64)
    torch.testing.assert_close(liquid(x), s4(x), rtol=0, atol=0)


@pytest.mark.parametrize("degree,lcontract", [(2, False), (3, False), (4, True)])
def test_causal_liquid_terms_equal_explicit_loops(degree, lcontract):
    torch.manual_seed(1)
    block = build("mix.liquid_s4", liquid_degree=degree, lcontract=lcontract, channels=2)
    ssm = block.ssm
    u = torch.randn(2, DIM, 11, dtype=F64)
    y_liquid, _ = ssm(u)
    y_plain, _ = ssm.core(u)
    coeffs = coefficients_by_hand(ssm, degree)
    expected = torch.zeros_like(y_plain)
    for t in range(u.shape[-1]):
        for p in range(2, degree + 1):
            prod = torch.ones(2, DIM, dtype=F64)
            for k in range(p):
                prod = prod * (u[..., t - k] if t - k >= 0 else 0.0)
            term = torch.tanh(prod) if lcontract else prod
            expected[..., t] += coeffs[p - 2][None] * term[:, None]
    torch.testing.assert_close(y_liquid - y_plain, expected, rtol=1e-10, atol=1e-12)


def test_reference_pb_is_the_flipped_all_combinations_sequence_and_not_causal():
    torch.manual_seed(2)
    block = build("mix.liquid_s4", variant="reference_pb", liquid_degree=2)
    spec = get_registry().get("mix.liquid_s4")
    caps = spec.capabilities({**spec.defaults(), "variant": "reference_pb"})
    assert not caps.causal and not caps.step
    ssm = block.ssm
    L = 7
    u = torch.randn(1, DIM, L, dtype=F64)
    n = next(n for n in itertools.count(2) if math.comb(n, 2) >= L)
    combos = list(itertools.combinations(range(L - n, L), 2))[-L:]
    seq = torch.stack([u[..., i] * u[..., j] for i, j in combos], -1)
    seq = torch.nn.functional.pad(seq, (0, L - seq.shape[-1])).flip(-1)
    y_liquid, _ = ssm(u)
    y_plain, _ = ssm.core(u)
    expected = coefficients_by_hand(ssm, 2)[0][None, :, :, None] * seq[:, None]
    torch.testing.assert_close(y_liquid - y_plain, expected, rtol=1e-10, atol=1e-12)
    x = torch.randn(1, L, DIM, dtype=F64)
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert (block(x2)[:, 0] - block(x)[:, 0]).abs().max() > 1e-6  # the first output reads the last input


def test_chunks_longer_than_l_max_carry_the_liquid_history():
    torch.manual_seed(3)
    block = build("mix.liquid_s4", liquid_degree=3, l_max=8)
    x = torch.randn(2, 21, DIM, dtype=F64)
    y, state = block(x, return_state=True)
    y1, s1 = block(x[:, :9], return_state=True)
    y2, s2 = block(x[:, 9:], state=s1, return_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(s2[1], state[1])
