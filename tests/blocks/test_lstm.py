from __future__ import annotations

import pytest
import torch

from ssmgraph.blocks import lstm
from ssmgraph.registry.specs import ShapeError, TensorType

SPEC = lstm.LSTM
D = 6


def explicit_lstm(m, x, state=None):
    """The LSTM equations (torch gate order i, f, g, o), layer by layer, direction by direction."""
    mod = m.lstm
    dirs = 2 if mod.bidirectional else 1
    batch, length, _ = x.shape
    hid = mod.hidden_size
    h0 = torch.zeros(mod.num_layers * dirs, batch, hid, dtype=x.dtype) if state is None else state[0]
    c0 = torch.zeros_like(h0) if state is None else state[1]
    hs, cs, inp = [], [], x
    for layer in range(mod.num_layers):
        outs = []
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = getattr(mod, "weight_ih" + sfx), getattr(mod, "weight_hh" + sfx)
            b = getattr(mod, "bias_ih" + sfx) + getattr(mod, "bias_hh" + sfx)
            h, c = h0[layer * dirs + d], c0[layer * dirs + d]
            seq = [None] * length
            for t in reversed(range(length)) if d else range(length):
                i, f, g, o = (inp[:, t] @ w_ih.T + h @ w_hh.T + b).chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                seq[t] = h
            outs.append(torch.stack(seq, dim=1))
            hs.append(h)
            cs.append(c)
        inp = torch.cat(outs, dim=-1)
    y = inp if m.out_proj is None else m.out_proj(inp)
    return y, (torch.stack(hs), torch.stack(cs))


def test_spec_is_well_formed_and_capabilities():
    assert SPEC.validate() == []
    uni = SPEC.capabilities(SPEC.defaults())
    assert uni.causal and uni.step and not uni.bidirectional and not uni.pointwise
    bi = SPEC.capabilities({**SPEC.defaults(), "bidirectional": True})
    assert bi.bidirectional and not bi.causal and not bi.step


def test_out_proj_only_when_width_differs(build):
    assert build(SPEC, D).out_proj is None
    assert build(SPEC, D, hidden=D // 2, bidirectional=True).out_proj is None
    m = build(SPEC, D, hidden=10)
    assert tuple(m.out_proj.weight.shape) == (D, 10)
    assert tuple(build(SPEC, D, bidirectional=True).out_proj.weight.shape) == (D, 2 * D)
    assert "lstm.weight_ih_l0" in m.state_dict()


@pytest.mark.parametrize(
    "args", [{}, {"layers": 2, "hidden": 5}, {"layers": 2, "bidirectional": True}, {"hidden": 4, "bidirectional": True}], ids=str
)
def test_forward_equals_lstm_equations(build, args):
    m = build(SPEC, D, **args).double()
    x = torch.randn(3, 7, D, dtype=torch.float64)
    y, _ = explicit_lstm(m, x)
    assert m(x).shape == (3, 7, D)
    torch.testing.assert_close(m(x), y, rtol=1e-10, atol=1e-12)


def test_forward_with_state_equals_equations(build):
    m = build(SPEC, D, layers=2, hidden=4).double()
    x = torch.randn(2, 5, D, dtype=torch.float64)
    state = (torch.randn(2, 2, 4, dtype=torch.float64), torch.randn(2, 2, 4, dtype=torch.float64))
    y, final = m(x, state=state, return_state=True)
    y_ref, final_ref = explicit_lstm(m, x, state)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-12)


def test_step_loop_equals_forward_values_and_grads(build):
    m = build(SPEC, D, layers=2, hidden=5).double()
    x = torch.randn(2, 6, D, dtype=torch.float64, requires_grad=True)
    y, final = m(x, return_state=True)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *m.parameters()], gy)
    state = m.init_state(2)
    assert state[0].shape == (2, 2, 5) and state[0].dtype == torch.float64
    outs = []
    for t in range(6):
        y_t, state = m.step(x[:, t], state)
        outs.append(y_t)
    y_step = torch.stack(outs, dim=1)
    torch.testing.assert_close(y_step, y, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(state, final, rtol=1e-8, atol=1e-12)
    for g_step, g in zip(torch.autograd.grad(y_step, [x, *m.parameters()], gy), grads, strict=True):
        torch.testing.assert_close(g_step, g, rtol=1e-8, atol=1e-12)


def test_chunked_equals_one_pass_and_causal(build):
    m = build(SPEC, D, layers=2).double()
    x = torch.randn(2, 9, D, dtype=torch.float64)
    full = m(x)
    a, state = m(x[:, :4], return_state=True)
    b = m(x[:, 4:], state=state)
    torch.testing.assert_close(torch.cat([a, b], dim=1), full, rtol=1e-10, atol=1e-12)
    x2 = x.clone()
    x2[:, 5:] += 1.0
    assert torch.equal(m(x2)[:, :5], full[:, :5])


def test_mask_final_state_is_after_last_valid_token(build):
    m = build(SPEC, D, layers=2, hidden=4).double()
    lengths = [6, 3, 0]
    x = torch.randn(3, 6, D, dtype=torch.float64)
    mask = torch.arange(6)[None] < torch.tensor(lengths)[:, None]
    init = (torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64))
    y, (h, c) = m(x, state=init, mask=mask, return_state=True)
    for b, n in enumerate(lengths):
        s_b = (init[0][:, b : b + 1], init[1][:, b : b + 1])
        if n == 0:  # nothing valid: the state is the initial state
            torch.testing.assert_close(h[:, b], init[0][:, b])
            torch.testing.assert_close(c[:, b], init[1][:, b])
            continue
        y_b, (h_b, c_b) = m(x[b : b + 1, :n], state=s_b, return_state=True)
        torch.testing.assert_close(y[b, :n], y_b[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(h[:, b], h_b[:, 0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(c[:, b], c_b[:, 0], rtol=1e-10, atol=1e-12)
    assert y[~mask].abs().max() == 0  # padded outputs are zero, out_proj's bias and the empty row included
    # continuing after a padded chunk equals continuing the unpadded sequence
    nxt = torch.randn(3, D, dtype=torch.float64)
    y_next, _ = m.step(nxt, (h, c))
    _, s1 = m(x[1:2, :3], state=(init[0][:, 1:2], init[1][:, 1:2]), return_state=True)
    torch.testing.assert_close(y_next[1], m.step(nxt[1:2], s1)[0][0], rtol=1e-10, atol=1e-12)


def test_bidirectional_padding_does_not_reach_valid_outputs(build):
    m = build(SPEC, D, bidirectional=True).double()
    x = torch.randn(2, 7, D, dtype=torch.float64)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    y = m(x, mask=mask)
    torch.testing.assert_close(y[1, :4], m(x[1:2, :4])[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(y[0], m(x[:1])[0], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="bidirectional"):
        m(x, return_state=True)


def test_gradients_and_shape_rule(build, out_type, grads_reach_all):
    m = build(SPEC, D, layers=2, hidden=4)
    m(torch.randn(2, 5, D)).pow(2).sum().backward()
    grads_reach_all(m)
    assert out_type(SPEC, D) == TensorType(("batch", "seq", D))
    with pytest.raises(ShapeError):
        out_type(SPEC, TensorType(("batch", "seq"), "int"))
