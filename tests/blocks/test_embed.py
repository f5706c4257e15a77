from __future__ import annotations

import math

import pytest
import torch

from ssmgraph.blocks import embed
from ssmgraph.registry.specs import ShapeError, TensorType

TOKENS = TensorType(("batch", "seq"), "int")


@pytest.mark.parametrize("spec", embed.ssmgraph_blocks(), ids=lambda s: s.name)
def test_spec_is_well_formed(spec):
    assert spec.validate() == []


def test_capabilities():
    assert embed.TOKEN.capabilities(embed.TOKEN.defaults()).pointwise
    assert embed.LINEAR.capabilities(embed.LINEAR.defaults()).pointwise
    pos = embed.POSITION.capabilities(embed.POSITION.defaults())
    assert pos.step and pos.causal and not pos.pointwise and not pos.bidirectional


# ----------------------------------------------------------------------------- embed.token


def test_token_lookup_and_tieable_weight(build):
    emb = build(embed.TOKEN, TOKENS, vocab=11, dim=6)
    assert tuple(emb.weight.shape) == (11, 6)
    ids = torch.randint(0, 11, (3, 7))
    torch.testing.assert_close(emb(ids), emb.weight[ids])
    torch.testing.assert_close(emb(ids.int()), emb.weight[ids])  # int32 ids work too
    assert list(dict(emb.named_parameters())) == ["weight"]


def test_token_shape_rule(out_type):
    assert out_type(embed.TOKEN, TOKENS, vocab=11, dim=6) == TensorType(("batch", "seq", 6))
    with pytest.raises(ShapeError, match="integer token ids"):
        out_type(embed.TOKEN, 6, vocab=11, dim=6)


def test_token_gradient_reaches_looked_up_rows(build):
    emb = build(embed.TOKEN, TOKENS, vocab=5, dim=3)
    emb(torch.tensor([[0, 2, 2]])).sum().backward()
    assert emb.weight.grad[[0, 2]].abs().sum() > 0
    assert emb.weight.grad[[1, 3, 4]].abs().sum() == 0


# ----------------------------------------------------------------------------- embed.linear


def test_linear_embedding(build, out_type):
    lin = build(embed.LINEAR, 3, dim=8)
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(lin(x), x @ lin.weight.T + lin.bias)
    assert out_type(embed.LINEAR, 3, dim=8) == TensorType(("batch", "seq", 8))
    with pytest.raises(ShapeError):
        out_type(embed.LINEAR, TOKENS, dim=8)


# ----------------------------------------------------------------------------- embed.position


def vaswani(pos: int, i: int, d: int) -> float:
    """PE(pos, 2k) = sin(pos / 10000^(2k/d)), PE(pos, 2k+1) = cos(pos / 10000^(2k/d))."""
    k = i // 2
    angle = pos / 10000 ** (2 * k / d)
    return math.sin(angle) if i % 2 == 0 else math.cos(angle)


@pytest.mark.parametrize("dim", [8, 7])
def test_sinusoidal_equals_vaswani_formula(build, dim):
    pe = build(embed.POSITION, TOKENS, max_len=64, dim=dim, kind="sinusoidal")
    assert list(pe.parameters()) == [] and pe.state_dict() == {}
    x = torch.zeros(2, 50, 3, dtype=torch.float64)  # float features: output takes their dtype
    y = pe(x)
    assert y.dtype == torch.float64 and y.shape == (2, 50, dim)
    expected = torch.tensor([[vaswani(p, i, dim) for i in range(dim)] for p in range(50)], dtype=torch.float64)
    torch.testing.assert_close(y[0], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y[1], expected, rtol=1e-12, atol=1e-12)


def test_learned_positions_index_the_table(build):
    pe = build(embed.POSITION, TOKENS, max_len=16, dim=4)
    assert pe.kind == "learned" and tuple(pe.weight.shape) == (16, 4)
    ids = torch.randint(0, 9, (3, 10))
    y = pe(ids)
    torch.testing.assert_close(y, pe.weight[:10].expand(3, 10, 4))
    y.sum().backward()
    assert pe.weight.grad[:10].abs().sum() > 0 and pe.weight.grad[10:].abs().sum() == 0


@pytest.mark.parametrize("kind", ["learned", "sinusoidal"])
def test_chunks_and_steps_continue_positions(build, kind):
    pe = build(embed.POSITION, TOKENS, max_len=32, dim=6, kind=kind).double()
    ids = torch.randint(0, 9, (2, 12))
    full = pe(ids)
    a, state = pe(ids[:, :5], return_state=True)
    assert state.dtype == torch.int64 and state.tolist() == [5, 5]
    b, state = pe(ids[:, 5:], state=state, return_state=True)
    torch.testing.assert_close(torch.cat([a, b], dim=1), full, rtol=0, atol=0)
    assert state.tolist() == [12, 12]

    state = pe.init_state(2)
    assert state.shape == (2,) and state.dtype == torch.int64
    steps = []
    for t in range(12):
        y_t, state = pe.step(ids[:, t], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, dim=1), full, rtol=0, atol=0)


def test_step_on_float_features(build):
    pe = build(embed.POSITION, TensorType(("batch", "seq", 3)), max_len=8, dim=4, kind="sinusoidal")
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    state = pe.init_state(2)
    outs = []
    for t in range(5):
        y_t, state = pe.step(x[:, t], state)
        assert y_t.shape == (2, 4)
        outs.append(y_t)
    torch.testing.assert_close(torch.stack(outs, dim=1), pe(x))


def test_mask_final_state_counts_valid_tokens(build):
    pe = build(embed.POSITION, TOKENS, max_len=16, dim=4)
    ids = torch.randint(0, 9, (3, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    _y, state = pe(ids, mask=mask, return_state=True)
    assert state.tolist() == [6, 3, 0]
    y_next, _ = pe.step(ids[:, 0], state)
    torch.testing.assert_close(y_next[1], pe.weight[3])


def test_position_shape_rule(out_type):
    assert out_type(embed.POSITION, TOKENS, max_len=8, dim=4) == TensorType(("batch", "seq", 4))
    feats = TensorType(("batch", "seq", 3))
    assert out_type(embed.POSITION, feats, max_len=8, dim=4) == TensorType(("batch", "seq", 4))
    with pytest.raises(ShapeError, match="max_len"):
        out_type(embed.POSITION, TensorType(("batch", 9), "int"), max_len=8, dim=4)
    with pytest.raises(ShapeError, match="token ids"):
        out_type(embed.POSITION, TensorType(("batch", "seq", 2), "int"), max_len=8, dim=4)
    with pytest.raises(ShapeError, match="features"):
        out_type(embed.POSITION, TensorType(("batch", 3)), max_len=8, dim=4)


def test_position_rejects_too_long_input(build):
    pe = build(embed.POSITION, TOKENS, max_len=4, dim=2, kind="sinusoidal")
    with pytest.raises(ValueError, match="max_len"):
        pe(torch.zeros(1, 5, dtype=torch.long))


def test_learned_positions_past_max_len_are_a_clear_error_in_chunks_and_steps(build):
    pe = build(embed.POSITION, TOKENS, max_len=4, dim=2, kind="learned")
    _, state = pe(torch.zeros(1, 3, dtype=torch.long), return_state=True)
    with pytest.raises(ValueError, match="position 4 is past the learned position embedding's max_len 4"):
        pe(torch.zeros(1, 2, dtype=torch.long), state=state)  # positions 3 and 4
    _, state = pe.step(torch.zeros(1, dtype=torch.long), state)  # position 3: the last
    with pytest.raises(ValueError, match="position 4 is past"):
        pe.step(torch.zeros(1, dtype=torch.long), state)
