"""``ssmgraph.ops.linear``: the oneDNN path equals ``F.linear`` in values and gradients,
steps aside where it must (autocast, other dtypes, double backward, torch.compile) and when
switched off."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import ssmgraph.ops.linear as fast
from ssmgraph.ops.linear import Linear, linear, onednn_linear

needs_onednn = pytest.mark.skipif(fast._ONEDNN_LINEAR is None, reason="PyTorch built without oneDNN's linear op")


def _inputs(
    shape: tuple[int, ...], out: int, bias: bool, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    w = torch.randn(out, shape[-1], generator=g) / shape[-1] ** 0.5
    b = torch.randn(out, generator=g) if bias else None
    return x, w, b


@needs_onednn
@pytest.mark.parametrize("shape", [(70, 7), (2, 40, 16), (2, 3, 12, 8)])
@pytest.mark.parametrize("bias", [True, False])
def test_values_and_gradients_equal_f_linear(shape, bias):
    x, w, b = _inputs(shape, 11, bias)
    leaves = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
    refs = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
    y = linear(*leaves) if bias else linear(*leaves, None)
    y_ref = F.linear(*refs) if bias else F.linear(*refs, None)
    assert y.grad_fn is not None and "OneDNN" in type(y.grad_fn).__name__  # the fast path ran
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    for leaf, ref in zip(leaves, refs):
        torch.testing.assert_close(leaf.grad, ref.grad, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_only_the_inputs_that_need_a_gradient_get_one():
    x, w, b = _inputs((64, 6), 3, True)
    w.requires_grad_()
    linear(x, w, b).sum().backward()
    assert w.grad is not None and x.grad is None and b.grad is None
    torch.testing.assert_close(w.grad, torch.ones(3, 64) @ x)


@needs_onednn
def test_without_grad_and_on_non_contiguous_input():
    x, w, b = _inputs((80, 4), 5, True)
    with torch.no_grad():
        torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
        xt = torch.randn(4, 80).t()  # (80, 4), not contiguous
        torch.testing.assert_close(linear(xt, w, b), F.linear(xt, w, b), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_double_backward_works():
    x, w, b = _inputs((64, 4), 2, True)
    x.requires_grad_()
    w.requires_grad_()
    (gx,) = torch.autograd.grad(linear(x, w, b).pow(2).sum(), x, create_graph=True)
    (gw,) = torch.autograd.grad(gx.sum(), w)
    x2, w2 = x.detach().requires_grad_(), w.detach().requires_grad_()
    (gx2,) = torch.autograd.grad(F.linear(x2, w2, b).pow(2).sum(), x2, create_graph=True)
    (gw2,) = torch.autograd.grad(gx2.sum(), w2)
    torch.testing.assert_close(gw, gw2, rtol=1e-5, atol=1e-5)


def test_other_dtypes_autocast_few_rows_and_the_switch_take_f_linear(monkeypatch):
    x, w, b = _inputs((64, 4), 2, True)
    x64, w64, b64 = x.double().requires_grad_(), w.double().requires_grad_(), b.double()
    assert torch.autograd.gradcheck(lambda a, c: linear(a, c, b64), (x64, w64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(x, w, b).dtype == torch.bfloat16
    few = linear(x[:63].clone().requires_grad_(), w, b)  # a decoding step's few rows
    assert "OneDNN" not in type(few.grad_fn).__name__
    monkeypatch.setattr(fast, "_ONEDNN_LINEAR", None)
    y = linear(x.requires_grad_(), w, b)
    assert "OneDNN" not in type(y.grad_fn).__name__


@needs_onednn
def test_onednn_linear_switches_the_path_for_a_block_of_code():
    x, w, b = _inputs((64, 8), 4, True)
    x, w = x.requires_grad_(), w.requires_grad_()
    with onednn_linear(False):
        off = linear(x, w, b)
        with onednn_linear(True):
            on = linear(x, w, b)
        assert "OneDNN" not in type(linear(x, w, b).grad_fn).__name__  # the outer setting is back
    assert "OneDNN" not in type(off.grad_fn).__name__
    assert "OneDNN" in type(on.grad_fn).__name__
    assert "OneDNN" in type(linear(x, w, b).grad_fn).__name__
    grad = torch.randn_like(on)
    with onednn_linear(False):  # a backward outside its forward's setting still runs
        gx, gw = torch.autograd.grad(on, (x, w), grad)
    gx2, gw2 = torch.autograd.grad(off, (x, w), grad)
    torch.testing.assert_close(gx, gx2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, gw2, rtol=1e-5, atol=1e-5)


def test_the_module_is_an_nn_linear_with_its_state_dict():
    torch.manual_seed(0)
    module = Linear(4, 3)
    reference = torch.nn.Linear(4, 3)
    reference.load_state_dict(module.state_dict())
    assert isinstance(module, torch.nn.Linear) and set(module.state_dict()) == {"weight", "bias"}
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(module(x), reference(x), rtol=1e-5, atol=1e-5)


def test_torch_compile_traces_it():
    torch.manual_seed(0)
    module = Linear(4, 3)
    x = torch.randn(64, 4)  # enough rows for the fast path in eager mode
    compiled = torch.compile(module, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), F.linear(x, module.weight, module.bias), rtol=1e-5, atol=1e-5)
