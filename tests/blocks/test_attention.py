from __future__ import annotations

import math

import pytest
import torch

from ssmgraph.blocks import attention
from ssmgraph.blocks.attention import apply_rope, rope_angles
from ssmgraph.blocks.rope import Rotary
from ssmgraph.registry.specs import ShapeError, TensorType

ATT, CROSS = attention.ATTENTION, attention.CROSS_ATTENTION
D = 16


def explicit_rope(x: torch.Tensor, positions: torch.Tensor, base: float, dims: int | None = None) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+d/2}) of x (B, L, H, d) by pos · base^(-2i/d) with a 2×2 matrix
    (``dims``: only the first d = dims features; the others are kept)."""
    d = x.shape[-1] if dims is None else dims
    out = x.clone()
    for i in range(d // 2):
        theta = positions.to(x.dtype) * base ** (-2 * i / d)  # (B, L)
        c, s = torch.cos(theta)[..., None], torch.sin(theta)[..., None]
        a, b = x[..., i], x[..., i + d // 2]
        out[..., i] = c * a - s * b
        out[..., i + d // 2] = s * a + c * b
    return out


def reference(m, x, *, key_valid=None, positions=None):
    """softmax(QKᵀ/sqrt(d) + mask) V head by head, with the module's weights (fp64)."""
    batch, length, dim = x.shape
    h, kv, hd = m.heads, m.kv_heads, m.head_dim
    proj = x @ m.qkv.weight.T + (m.qkv.bias if m.qkv.bias is not None else 0)
    q = proj[..., :dim].reshape(batch, length, h, hd)
    k = proj[..., dim : dim + kv * hd].reshape(batch, length, kv, hd)
    v = proj[..., dim + kv * hd :].reshape(batch, length, kv, hd)
    if m.rope:
        pos = positions if positions is not None else torch.arange(length).expand(batch, length)
        q, k = explicit_rope(q, pos, m.rope_base), explicit_rope(k, pos, m.rope_base)
    allowed = torch.ones(batch, length, length, dtype=torch.bool)
    if m.causal:
        allowed &= torch.ones(length, length).tril().bool()
    if key_valid is not None:
        allowed &= key_valid[:, None, :]
    bias = torch.zeros(batch, length, length, dtype=x.dtype).masked_fill(~allowed, float("-inf"))
    out = torch.empty(batch, length, h, hd, dtype=x.dtype)
    for head in range(h):
        g = head // (h // kv)  # the key/value head this query head shares
        scores = q[:, :, head] @ k[:, :, g].transpose(1, 2) / math.sqrt(hd) + bias
        out[:, :, head] = torch.softmax(scores, dim=-1) @ v[:, :, g]
    return out.reshape(batch, length, dim) @ m.out_proj.weight.T + (m.out_proj.bias if m.out_proj.bias is not None else 0)


@pytest.mark.parametrize("spec", attention.ssmgraph_blocks(), ids=lambda s: s.name)
def test_spec_is_well_formed(spec):
    assert spec.validate() == []


def test_capabilities_follow_causal():
    causal = ATT.capabilities({**ATT.defaults(), "causal": True})
    assert causal.causal and causal.step and not causal.bidirectional and not causal.pointwise
    bidir = ATT.capabilities({**ATT.defaults(), "causal": False})
    assert bidir.bidirectional and not bidir.causal and not bidir.step
    cross = CROSS.capabilities(CROSS.defaults())
    assert cross.causal and not cross.step and CROSS.inputs == ("x", "memory")


def test_state_dict_names(build):
    m = build(ATT, D, heads=4, kv_heads=2, bias=True)
    assert set(m.state_dict()) == {"qkv.weight", "qkv.bias", "out_proj.weight", "out_proj.bias"}
    assert tuple(m.qkv.weight.shape) == (D + 2 * 2 * 4, D)
    assert set(build(CROSS, D, 8).state_dict()) == {"q_proj.weight", "kv_proj.weight", "out_proj.weight"}


@pytest.mark.parametrize(
    "args",
    [
        {"causal": True},
        {"causal": False},
        {"causal": True, "kv_heads": 2, "bias": True},
        {"causal": True, "rope": True, "kv_heads": 1},
        {"causal": False, "rope": True, "rope_base": 500.0},
    ],
    ids=str,
)
def test_forward_equals_explicit_softmax_attention(build, args):
    m = build(ATT, D, heads=4, **args).double()
    x = torch.randn(3, 9, D, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference(m, x), rtol=1e-10, atol=1e-12)


def test_gqa_equals_repeated_kv_heads(build):
    gqa = build(ATT, D, heads=4, kv_heads=2, rope=True).double()
    mha = build(ATT, D, heads=4, rope=True).double()
    hd = D // 4
    wq, wk, wv = gqa.qkv.weight.split((D, 2 * hd, 2 * hd))
    rep = lambda w: w.view(2, hd, D).repeat_interleave(2, dim=0).reshape(D, D)
    with torch.no_grad():
        mha.qkv.weight.copy_(torch.cat([wq, rep(wk), rep(wv)]))
        mha.out_proj.weight.copy_(gqa.out_proj.weight)
    x = torch.randn(2, 7, D, dtype=torch.float64)
    torch.testing.assert_close(gqa(x), mha(x), rtol=1e-12, atol=1e-12)


def test_rope_equals_explicit_rotation():
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64)  # (B, L, H, d)
    positions = torch.randint(0, 1000, (2, 5))
    cos, sin = rope_angles(positions, 8, 10000.0, torch.float64)
    got = apply_rope(x.transpose(1, 2), cos[:, None], sin[:, None]).transpose(1, 2)
    torch.testing.assert_close(got, explicit_rope(x, positions, 10000.0), rtol=1e-12, atol=1e-12)
    # a rotation keeps norms
    torch.testing.assert_close(got.norm(dim=-1), x.norm(dim=-1), rtol=1e-12, atol=1e-12)


def test_partial_rope_rotates_the_first_rope_dims_features_only(out_type):
    """rope_dims r < head_dim (GPT-NeoX's rotary_pct): features < r rotate as a head of r features would
    (f_i = base^(-2i/r), pairs i and i + r/2); the others pass through; through the block too."""
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64)
    positions = torch.randint(0, 1000, (2, 5))
    rotary = Rotary(8, 500.0, dims=4).double()
    cos, sin = rotary(positions, torch.float64)
    got = apply_rope(x.transpose(1, 2), cos[:, None], sin[:, None]).transpose(1, 2)
    torch.testing.assert_close(got[..., :4], explicit_rope(x[..., :4], positions, 500.0), rtol=1e-12, atol=1e-12)
    assert torch.equal(got[..., 4:], x[..., 4:])
    block = attention.Attention(D, heads=2, rope=True, rope_base=500.0, rope_dims=4).double()
    y = torch.randn(1, 6, D, dtype=torch.float64)
    q, k, _ = block.qkv(y).view(1, 6, 3, 2, 8).unbind(2)
    pos = torch.arange(6)[None]
    q, k = explicit_rope(q, pos, 500.0, dims=4), explicit_rope(k, pos, 500.0, dims=4)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(8)
    _, _, v = block.qkv(y).view(1, 6, 3, 2, 8).unbind(2)
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    want = block.out_proj(torch.einsum("bhij,bjhd->bihd", probs, v).reshape(1, 6, D))
    torch.testing.assert_close(block(y), want, rtol=1e-10, atol=1e-10)
    for bad in (3, 10):
        with pytest.raises(ShapeError, match="rope_dims"):
            out_type(ATT, D, heads=2, rope=True, rope_dims=bad)


def test_rope_scores_depend_on_relative_position_only():
    q, k = torch.randn(2, 6, 16, dtype=torch.float64), torch.randn(2, 6, 16, dtype=torch.float64)
    pos = torch.arange(6).expand(2, 6)

    def scores(shift: int) -> torch.Tensor:
        cos, sin = rope_angles(pos + shift, 16, 10000.0, torch.float64)
        return apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(1, 2)

    base = scores(0)
    for shift in (1, 17, 1000):
        torch.testing.assert_close(scores(shift), base, rtol=1e-9, atol=1e-9)
    # and the rotation does something: without it the scores differ
    assert not torch.allclose(base, q @ k.transpose(1, 2))


def test_causality(build):
    m = build(ATT, D, heads=4, rope=True).double()
    x = torch.randn(2, 10, D, dtype=torch.float64)
    y = m(x)
    for t in (0, 4, 8):
        x2 = x.clone()
        x2[:, t + 1 :] += torch.randn_like(x2[:, t + 1 :])
        y2 = m(x2)
        assert torch.equal(y2[:, : t + 1], y[:, : t + 1])
        assert not torch.allclose(y2[:, t + 1 :], y[:, t + 1 :])


@pytest.mark.parametrize("args", [{}, {"rope": True, "kv_heads": 2, "bias": True}], ids=str)
def test_step_loop_equals_forward_values_and_grads(build, args):
    m = build(ATT, D, heads=4, **args).double()
    x = torch.randn(2, 8, D, dtype=torch.float64, requires_grad=True)
    y = m(x)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *m.parameters()], gy)

    state = m.init_state(2)
    outs = []
    for t in range(8):
        y_t, state = m.step(x[:, t], state)
        outs.append(y_t)
    y_step = torch.stack(outs, dim=1)
    torch.testing.assert_close(y_step, y, rtol=1e-8, atol=1e-12)
    assert state[0].shape == (2, m.kv_heads, 8, m.head_dim) and state[2].all()
    for g_step, g in zip(torch.autograd.grad(y_step, [x, *m.parameters()], gy), grads, strict=True):
        torch.testing.assert_close(g_step, g, rtol=1e-8, atol=1e-12)


def test_chunked_equals_one_pass(build):
    m = build(ATT, D, heads=4, kv_heads=2, rope=True).double()
    x = torch.randn(2, 13, D, dtype=torch.float64)
    full = m(x)
    state, outs = None, []
    for lo, hi in ((0, 5), (5, 6), (6, 13)):
        y, state = m(x[:, lo:hi], state=state, return_state=True)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-10, atol=1e-12)


def test_bidirectional_key_padding_mask(build):
    m = build(ATT, D, heads=4, causal=False, rope=True).double()
    x = torch.randn(3, 7, D, dtype=torch.float64)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0], mask[1, :4] = True, True  # sample 2 is all padding
    y = m(x, mask=mask)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[0], m(x[:1])[0])
    torch.testing.assert_close(y[1, :4], m(x[1:2, :4])[0])
    expected = reference(m, x[:2], key_valid=mask[:2])
    torch.testing.assert_close(y[:2][mask[:2]], expected[mask[:2]], rtol=1e-10, atol=1e-12)
    x2 = x.clone()
    x2[~mask] = torch.randn_like(x2[~mask])  # padded positions change
    torch.testing.assert_close(m(x2, mask=mask)[mask], y[mask], rtol=0, atol=0)


def test_padded_chunk_then_steps_continue_each_sequence(build):
    m = build(ATT, D, heads=4, kv_heads=2, rope=True).double()
    lengths = [5, 3, 1]
    prompt = torch.randn(3, 5, D, dtype=torch.float64)
    mask = torch.arange(5)[None] < torch.tensor(lengths)[:, None]
    y, state = m(prompt, mask=mask, return_state=True)
    assert torch.isfinite(y).all()
    cont = torch.randn(3, 4, D, dtype=torch.float64)
    steps = []
    for t in range(4):
        y_t, state = m.step(cont[:, t], state)
        steps.append(y_t)
    steps = torch.stack(steps, dim=1)
    for b, n in enumerate(lengths):
        alone = m(torch.cat([prompt[b : b + 1, :n], cont[b : b + 1]], dim=1))
        torch.testing.assert_close(y[b, :n], alone[0, :n], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(steps[b], alone[0, n:], rtol=1e-10, atol=1e-12)


def test_bidirectional_has_no_state(build):
    m = build(ATT, D, causal=False)
    with pytest.raises(ValueError, match="bidirectional"):
        m(torch.randn(1, 3, D), return_state=True)


def test_dropout_on_attention_probabilities_only_in_training(build):
    m = build(ATT, D, dropout=0.5)
    x = torch.randn(2, 6, D)
    m.eval()
    torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)
    m.train()
    assert not torch.allclose(m(x), m.eval()(x))


def test_gradients_reach_every_parameter(build, grads_reach_all):
    m = build(ATT, D, heads=4, kv_heads=2, rope=True, bias=True)
    m(torch.randn(2, 5, D)).pow(2).sum().backward()
    grads_reach_all(m)


def test_attention_shape_rule(out_type):
    assert out_type(ATT, D, heads=4) == TensorType(("batch", "seq", D))
    with pytest.raises(ShapeError, match="not divisible by heads"):
        out_type(ATT, 18, heads=4)
    with pytest.raises(ShapeError, match="kv_heads"):
        out_type(ATT, D, heads=4, kv_heads=3)
    with pytest.raises(ShapeError, match="even head dimension"):
        out_type(ATT, 12, heads=4, rope=True)
    with pytest.raises(ShapeError, match="float"):
        out_type(ATT, TensorType(("batch", "seq"), "int"))


# ----------------------------------------------------------------------------- cross-attention


def cross_reference(m, x, memory, memory_mask=None):
    h, hd = m.heads, m.dim // m.heads
    q = (x @ m.q_proj.weight.T).unflatten(-1, (h, hd)).transpose(1, 2)
    k, v = (memory @ m.kv_proj.weight.T).chunk(2, dim=-1)
    k, v = k.unflatten(-1, (h, hd)).transpose(1, 2), v.unflatten(-1, (h, hd)).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if memory_mask is not None:
        scores = scores.masked_fill(~memory_mask[:, None, None, :], float("-inf"))
    y = (torch.softmax(scores, -1) @ v).transpose(1, 2).flatten(2)
    return y @ m.out_proj.weight.T


def test_cross_attention_equals_reference_and_masks_memory(build):
    m = build(CROSS, D, 12, heads=4).double()
    x, memory = torch.randn(2, 5, D, dtype=torch.float64), torch.randn(2, 9, 12, dtype=torch.float64)
    torch.testing.assert_close(m(x, memory), cross_reference(m, x, memory), rtol=1e-10, atol=1e-12)
    mm = torch.ones(2, 9, dtype=torch.bool)
    mm[1, 6:] = False
    y = m(x, memory, memory_mask=mm)
    torch.testing.assert_close(y, cross_reference(m, x, memory, mm), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(y[1], m(x[1:], memory[1:, :6])[0], rtol=1e-10, atol=1e-12)


def test_cross_attention_positions_of_x_are_independent(build):
    m = build(CROSS, D, D).double()
    x, memory = torch.randn(1, 6, D, dtype=torch.float64), torch.randn(1, 4, D, dtype=torch.float64)
    y = m(x, memory)
    x2 = x.clone()
    x2[:, 3] += 1.0
    y2 = m(x2, memory)
    assert torch.equal(torch.cat([y2[:, :3], y2[:, 4:]], 1), torch.cat([y[:, :3], y[:, 4:]], 1))
    # so the mixer protocol's padding mask of x has nothing to do
    assert torch.equal(m(x, memory, mask=torch.arange(6)[None] < 4), y)


def test_cross_attention_shape_rule_and_grads(out_type, build, grads_reach_all):
    mem = TensorType(("batch", "src", 8))
    assert out_type(CROSS, D, mem) == TensorType(("batch", "seq", D))
    with pytest.raises(ShapeError, match="not divisible"):
        out_type(CROSS, 18, mem, heads=4)
    with pytest.raises(ShapeError, match="batch"):
        out_type(CROSS, TensorType((2, "seq", D)), TensorType((3, "src", 8)))
    with pytest.raises(ShapeError, match="x and memory"):
        out_type(CROSS, D)
    m = build(CROSS, D, 8, bias=True)
    m(torch.randn(2, 3, D), torch.randn(2, 5, 8)).pow(2).sum().backward()
    grads_reach_all(m)


@pytest.mark.slow
def test_forward_and_step_trace_as_one_graph(build):
    """torch.compile(fullgraph=True) traces the cached, masked and stepped paths (no graph breaks)."""
    m = build(ATT, D, heads=4, kv_heads=2, rope=True)
    x = torch.randn(2, 6, D)
    mask = torch.arange(6)[None] < torch.tensor([[6], [4]])
    fwd = torch.compile(lambda x, mask: m(x, mask=mask, return_state=True), fullgraph=True, backend="eager")
    step = torch.compile(m.step, fullgraph=True, backend="eager")
    y, state = fwd(x, mask)
    torch.testing.assert_close(y, m(x, mask=mask))
    y_t, _ = step(x[:, 0], state)
    torch.testing.assert_close(y_t, m.step(x[:, 0], state)[0])


@pytest.mark.parametrize("window", [None, 3])
def test_softcap_and_scale_equal_explicit_capped_scores(build, window):
    """Gemma 2: scores s = scale · q·k capped to cap · tanh(s / cap) before the mask and softmax; step = forward."""
    cap, scale = 2.0, 0.7
    m = build(ATT, D, heads=4, kv_heads=2, rope=True, scale=scale, softcap=cap, window=window).double()
    x = torch.randn(2, 9, D, dtype=torch.float64)
    proj = x @ m.qkv.weight.T
    q, k, v = (t.reshape(2, 9, -1, 4).transpose(1, 2) for t in proj.split((D, D // 2, D // 2), dim=-1))
    cos, sin = rope_angles(torch.arange(9)[None], 4, m.rope_base, torch.float64)
    q, k = apply_rope(q, cos[:, None], sin[:, None]), apply_rope(k, cos[:, None], sin[:, None])
    out = torch.empty(2, 4, 9, 4, dtype=torch.float64)
    for head in range(4):
        for i in range(9):
            keys = range(max(0, i - window + 1) if window else 0, i + 1)
            s = torch.stack([(q[:, head, i] * k[:, head // 2, j]).sum(-1) for j in keys], -1) * scale
            p = torch.softmax(cap * torch.tanh(s / cap), dim=-1)
            out[:, head, i] = (p[..., None] * v[:, head // 2, list(keys)]).sum(1)
    want = out.transpose(1, 2).reshape(2, 9, D) @ m.out_proj.weight.T
    torch.testing.assert_close(m(x), want, rtol=1e-10, atol=1e-12)
    state, steps = m.init_state(2), []
    for t in range(9):
        y_t, state = m.step(x[:, t], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, dim=1), want, rtol=1e-10, atol=1e-12)
    with pytest.raises(ShapeError, match="softcap must be above 0"):
        ATT.shape([TensorType(("batch", "seq", D))], **{**ATT.defaults(), "softcap": 0.0})
