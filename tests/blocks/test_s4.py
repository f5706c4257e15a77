"""mix.s4 (DPLR) against independent references and the mixer protocol."""

from __future__ import annotations

import pytest
import torch

from ssmgraph.blocks.s4 import S4
from ssmgraph.ops.dplr import conj_full, dplr_dense
from ssmgraph.ops.hippo import hippo, nplr
from ssmgraph.registry.specs import ShapeError, TensorType

F64, F32 = torch.float64, torch.float32
C128 = torch.complex128
DIM = 6
VARIANTS = [
    {},
    {"measure": "legt", "channels": 2},
    {"measure": "fout", "glu": False},
    {"l_max": 5},  # sequences longer than l_max run in chunks with the state carried
]


def build(**over):
    return S4.factory([TensorType(("batch", "seq", DIM))], **{**S4.defaults(), "d_state": 8, "l_max": 16, **over})


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def step_loop(m, x, state=None):
    s = m.init_state(x.shape[0], dtype=x.dtype) if state is None else state
    ys = []
    for x_t in x.unbind(1):
        y_t, s = m.step(x_t, s)
        ys.append(y_t)
    return torch.stack(ys, 1), s


def test_spec_is_well_formed():
    assert S4.validate() == []
    caps = S4.capabilities(S4.defaults())
    assert caps.causal and caps.step and not caps.bidirectional
    assert not S4.capabilities({**S4.defaults(), "bidirectional": True}).step


def test_shape_rule():
    with pytest.raises(ShapeError, match="even"):
        S4.shape([TensorType(("b", "l", 8))], **{**S4.defaults(), "d_state": 9})
    with pytest.raises(ShapeError, match="dt_min"):
        S4.shape([TensorType(("b", "l", 8))], **{**S4.defaults(), "dt_min": 0.5, "dt_max": 0.1})


@pytest.mark.parametrize("over", VARIANTS)
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-8), (F32, 1e-4)])
def test_forward_equals_step_loop_values_and_gradients(over, dtype, tol):
    torch.manual_seed(0)
    m = build(**over).to(dtype)
    x = torch.randn(2, 12, DIM, dtype=dtype, requires_grad=True)
    w = torch.randn(2, 12, DIM, dtype=dtype)
    y, s = m(x, return_state=True)
    ys, ss = step_loop(m, x)
    assert rel_err(ys, y) < tol and rel_err(ss, s) < tol
    params = [x, *m.parameters()]
    g_conv = torch.autograd.grad((y * w).sum(), params)
    g_step = torch.autograd.grad((ys * w).sum(), params)
    for a, b in zip(g_conv, g_step):  # gradients pass through the Cauchy kernel's solve: 10x looser
        assert rel_err(a, b) < 10 * tol


@pytest.mark.parametrize("measure", ["legs", "legt", "fout"])
def test_dplr_kernel_equals_kernel_of_materialised_matrices(measure):
    torch.manual_seed(1)
    ssm = build(measure=measure, channels=2).double().ssm
    dA, dB, dC = ssm.step_matrices()  # dense Ā, B̄ and the true C (recovered from C~)
    ref, v = [], dB
    for _ in range(ssm.l_max):
        ref.append(torch.einsum("chn,hn->ch", dC, v).real)
        v = torch.einsum("hmn,hn->hm", dA, v)
    assert rel_err(ssm.kernel(), torch.stack(ref, -1)) < 1e-9


@pytest.mark.parametrize("measure", ["legs", "legt", "fout"])
def test_init_is_the_hippo_matrix(measure):
    ssm = build(d_state=16, measure=measure).ssm
    _dt, Lam, P, _B, _ = ssm.params()
    _W, _, _, V = nplr(measure, 16)
    Vf = conj_full(V)  # the unitary change of basis of the NPLR form
    A = Vf @ dplr_dense(Lam, P) @ Vf.conj().T  # (H, N, N) back in the HiPPO basis
    assert torch.allclose(A, hippo(measure, 16)[0].to(C128).expand(DIM, -1, -1), atol=1e-4)
    if measure == "legs":
        assert torch.allclose(Lam.real, torch.full_like(Lam.real, -0.5))
    assert P.shape == ((2 if measure == "legt" else 1), DIM, 8)
    for name in ("log_dt", "log_A_real", "A_imag", "P", "B"):
        assert getattr(ssm, name)._optim == {"lr": 1e-3, "weight_decay": 0.0}


def test_zero_low_rank_term_matches_the_diagonal_s4d_kernel():
    """Two independent algorithms (Cauchy generating function vs Vandermonde) on one system."""
    torch.manual_seed(2)
    ssm = build().double().ssm
    with torch.no_grad():
        ssm.P.zero_()
    dt, Lam, _, B, Ct = ssm.params()
    dtA = dt[:, None] * Lam
    dA = (1 + dtA / 2) / (1 - dtA / 2)
    C = Ct / (1 - dA**ssm.l_max)  # C~ = C (I - Ā^L) on a diagonal system
    dB = dt[:, None] / (1 - dtA / 2) * B
    pos = torch.arange(ssm.l_max, dtype=F64)
    ref = 2 * torch.einsum("chn,hnl->chl", C * dB, dA[..., None] ** pos).real
    assert rel_err(ssm.kernel(), ref) < 1e-10


def test_causality():
    torch.manual_seed(3)
    m = build(l_max=8).double()
    x = torch.randn(2, 20, DIM, dtype=F64)
    y = m(x)
    for t in (0, 7, 12, 18):
        x2 = x.clone()
        x2[:, t + 1 :] += torch.randn_like(x2[:, t + 1 :])
        assert (m(x2)[:, : t + 1] - y[:, : t + 1]).abs().max() <= 1e-12 * y.abs().max()


@pytest.mark.parametrize("split", [1, 7, 11])
def test_chunked_with_carried_state_equals_one_pass(split):
    torch.manual_seed(4)
    m = build(measure="legt", l_max=8).double()
    x = torch.randn(2, 12, DIM, dtype=F64)
    x0 = torch.randn(2, DIM, 4, dtype=C128)
    y, s = m(x, state=x0, return_state=True)
    y1, s1 = m(x[:, :split], state=x0, return_state=True)
    y2, s2 = m(x[:, split:], state=s1, return_state=True)
    assert rel_err(torch.cat([y1, y2], 1), y) < 1e-10 and rel_err(s2, s) < 1e-10
    ys, ss = step_loop(m, x, x0)
    assert rel_err(ys, y) < 1e-10 and rel_err(ss, s) < 1e-10


def test_mask_gives_the_state_after_the_last_valid_token():
    torch.manual_seed(5)
    m = build(l_max=4).double()
    x = torch.randn(3, 10, DIM, dtype=F64)
    lengths = [10, 6, 1]
    mask = torch.arange(10)[None] < torch.tensor(lengths)[:, None]
    x0 = torch.randn(3, DIM, 4, dtype=C128)
    y, s = m(x, state=x0, return_state=True, mask=mask)
    for b, n in enumerate(lengths):
        yb, sb = m(x[b : b + 1, :n], state=x0[b : b + 1], return_state=True)
        assert rel_err(y[b : b + 1, :n], yb) < 1e-12 and rel_err(s[b : b + 1], sb) < 1e-12


def test_bidirectional():
    torch.manual_seed(6)
    m = build(bidirectional=True).double()
    x = torch.randn(2, 10, DIM, dtype=F64)
    mask = torch.arange(10)[None] < torch.tensor([10, 7])[:, None]
    y = m(x, mask=mask)
    x2 = x.clone()
    x2[1, 7:] = 100.0
    assert (m(x2, mask=mask)[1, :7] - y[1, :7]).abs().max() == 0
    x3 = x.clone()
    x3[:, -1] += 1.0
    assert (m(x3)[:, 0] - m(x)[:, 0]).abs().max() > 1e-6
    with pytest.raises(ValueError, match="l_max"):
        m(torch.randn(1, 17, DIM, dtype=F64))
    with pytest.raises(ValueError):
        m.init_state(1)


def test_gradients_reach_every_parameter(grads_reach_all):
    torch.manual_seed(7)
    m = build(measure="legt", channels=2).double()
    y, _ = m(torch.randn(2, 8, DIM, dtype=F64), state=torch.randn(2, DIM, 4, dtype=C128), return_state=True)
    y.square().sum().backward()
    grads_reach_all(m)


def test_step_matrices_are_cached_only_without_autograd():
    m = build().double()
    with torch.no_grad():
        first = m.ssm.step_matrices()
        assert m.ssm.step_matrices() is first
        m.ssm.log_dt.add_(0.1)  # an optimizer step bumps the version: the cache is stale
        assert m.ssm.step_matrices() is not first
    assert m.ssm.step_matrices()[0].requires_grad


def test_autocast_keeps_the_ssm_in_float32():
    torch.manual_seed(8)
    m = build()
    x = torch.randn(2, 12, DIM)
    ref = m(x)
    seen = []
    m.ssm.register_forward_hook(lambda mod, inp, out: seen.append(out[0].dtype))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        y = m(x)
        y.float().square().sum().backward()
    assert seen == [F32]
    assert all(p.dtype == F32 and p.grad is not None and p.grad.dtype == F32 for p in m.parameters())
    assert rel_err(y.float(), ref) < 5e-2
