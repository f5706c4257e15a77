from __future__ import annotations

import pytest
import torch

from ssmgraph.ops import selective_scan as ss
from ssmgraph.ops.selective_scan import pick_method, selective_scan, selective_scan_ref

METHODS = ("loop", "blelloch")


def make_inputs(batch=2, d=3, length=7, n=4, dtype=torch.float64):
    """Random scan inputs (requires_grad), in upstream's layout; Δ before bias and softplus."""
    return {
        "u": torch.randn(batch, d, length, dtype=dtype),
        "delta": torch.randn(batch, d, length, dtype=dtype) * 0.5 - 1.0,
        "A": -torch.rand(d, n, dtype=dtype) - 0.5,
        "B": torch.randn(batch, n, length, dtype=dtype),
        "C": torch.randn(batch, n, length, dtype=dtype),
        "D": torch.randn(d, dtype=dtype),
        "z": torch.randn(batch, d, length, dtype=dtype),
        "delta_bias": torch.randn(d, dtype=dtype) * 0.3,
        "initial_state": torch.randn(batch, d, n, dtype=dtype),
    }


def run_with_grads(fn, inputs, **kw):
    """(y, h_last, grads of a random functional of both w.r.t. every input)."""
    xs = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    y, h = fn(**xs, delta_softplus=True, return_last_state=True, **kw)
    g = torch.Generator().manual_seed(1)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
    loss = loss + (h * torch.randn(h.shape, generator=g, dtype=h.dtype)).sum()
    grads = torch.autograd.grad(loss, list(xs.values()))
    return y, h, dict(zip(xs, grads))


def assert_close_rel(actual, expected, rtol, what=""):
    scale = expected.abs().max().clamp(min=1e-30)
    err = (actual - expected).abs().max() / scale
    assert err <= rtol, f"{what}: relative error {err:.2e} > {rtol:g}"


def test_ref_matches_explicit_scalar_loop():
    """The reference itself against the recurrence written out element by element."""
    x = make_inputs(batch=2, d=2, length=5, n=3)
    y = selective_scan_ref(**x, delta_softplus=True)
    delta = torch.nn.functional.softplus(x["delta"] + x["delta_bias"][:, None])
    for b in range(2):
        for d in range(2):
            h = x["initial_state"][b, d].clone()
            for t in range(5):
                dt = delta[b, d, t]
                h = torch.exp(dt * x["A"][d]) * h + dt * x["u"][b, d, t] * x["B"][b, :, t]
                out = (h * x["C"][b, :, t]).sum() + x["D"][d] * x["u"][b, d, t]
                out = out * torch.nn.functional.silu(x["z"][b, d, t])
                torch.testing.assert_close(y[b, d, t], out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("length,chunk", [(1, None), (2, None), (7, None), (16, None), (33, None), (33, 5), (16, 4), (9, 1)])
def test_matches_ref_values_and_grads(method, length, chunk):
    x = make_inputs(length=length)
    y0, h0, g0 = run_with_grads(selective_scan_ref, x)
    y1, h1, g1 = run_with_grads(selective_scan, x, method=method, chunk_size=chunk)
    assert_close_rel(y1, y0, 1e-12)
    assert_close_rel(h1, h0, 1e-12)
    for name in g0:
        assert_close_rel(g1[name], g0[name], 1e-10, f"d/d{name}")


@pytest.mark.parametrize("method", METHODS)
def test_gradcheck(method):
    x = {k: v.requires_grad_() for k, v in make_inputs(batch=1, d=2, length=6, n=2).items()}
    names = list(x)

    def f(*args):
        y, h = selective_scan(**dict(zip(names, args)), delta_softplus=True, return_last_state=True, method=method, chunk_size=4)
        return y, h

    assert torch.autograd.gradcheck(f, tuple(x.values()))


@pytest.mark.parametrize("method", METHODS)
def test_fp32_mamba_like_inputs_match_fp64_reference(method):
    """T5 of the anchors: 1e-5 relative in fp32, with A = -(1..N) and Δ around [1e-3, 1e-1]."""
    x = make_inputs(batch=2, d=16, length=300, n=16)
    x["A"] = -torch.arange(1, 17, dtype=torch.float64).repeat(16, 1)
    x["delta"] = torch.log(torch.expm1(torch.empty(2, 16, 300, dtype=torch.float64).uniform_(1e-3, 1e-1)))
    x["delta_bias"].zero_()
    y_ref = selective_scan_ref(**x, delta_softplus=True)
    y = selective_scan(**{k: v.float() for k, v in x.items()}, delta_softplus=True, method=method)
    assert y.dtype == torch.float32
    assert_close_rel(y.double(), y_ref, 1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_chunked_with_carried_state_equals_one_pass(method):
    x = make_inputs(length=20)
    x.pop("initial_state")
    y, h = selective_scan(**x, return_last_state=True, method=method)
    cut = 7
    time_dep = ("u", "delta", "B", "C", "z")
    first = {k: (v[..., :cut] if k in time_dep else v) for k, v in x.items()}
    second = {k: (v[..., cut:] if k in time_dep else v) for k, v in x.items()}
    y1, h1 = selective_scan(**first, return_last_state=True, method=method)
    y2, h2 = selective_scan(**second, return_last_state=True, initial_state=h1, method=method)
    torch.testing.assert_close(torch.cat([y1, y2], dim=-1), y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h2, h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("length", [1, 2, 3, 8, 13, 64])
def test_blelloch_recurrence_equals_loop(length):
    a = torch.rand(length - 1, 3, dtype=torch.float64)
    b = torch.randn(length, 3, dtype=torch.float64)
    loop = ss._recurrence_loop(a, b.clone())
    torch.testing.assert_close(ss._recurrence(a, b.clone(), "blelloch"), loop, rtol=1e-12, atol=1e-12)
    back = ss._recurrence_loop_reverse(a, b.clone())
    expected = b.clone()
    for t in reversed(range(length - 1)):
        expected[t] = expected[t] + a[t] * expected[t + 1]
    torch.testing.assert_close(back, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ss._recurrence(a, b.clone(), "blelloch", reverse=True), expected, rtol=1e-12, atol=1e-12)


def test_bf16_inputs_are_scanned_in_fp32():
    x = make_inputs(length=9, dtype=torch.float32)
    x16 = {k: v.bfloat16() for k, v in x.items()}
    y, h = selective_scan(**x16, delta_softplus=True, return_last_state=True)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    y32, h32 = selective_scan(**{k: v.float() for k, v in x16.items()}, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(h, h32, rtol=0, atol=0)
    torch.testing.assert_close(y, y32.bfloat16(), rtol=0, atol=0)


def test_auto_picks_by_shape_and_bad_method_is_refused():
    assert pick_method(8, 512, 16, 1024) == "loop"  # 65K elements per step
    assert pick_method(1, 128, 16, 1024) == "loop"  # 2048: the measured crossover
    assert pick_method(1, 64, 16, 1024) == "blelloch"  # 1024 elements per step
    assert pick_method(1, 32, 16, 64) == "loop"  # too short to be worth a tree
    assert pick_method(1, 32, 16, 65) == "blelloch"
    x = make_inputs(length=3)
    with pytest.raises(ValueError, match="method"):
        selective_scan(**x, method="hillis")
    with pytest.raises(ValueError, match="length-0"):
        selective_scan(**{k: (v[..., :0] if v.dim() == 3 and k != "initial_state" else v) for k, v in x.items()})
