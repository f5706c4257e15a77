from __future__ import annotations

import pytest
import torch

from ssmgraph.blocks import embed, heads
from ssmgraph.registry.specs import ShapeError, TensorType

LM, CLS = heads.LM, heads.CLASSIFY


@pytest.mark.parametrize("spec", heads.ssmgraph_blocks(), ids=lambda s: s.name)
def test_spec_is_well_formed(spec):
    assert spec.validate() == []


def test_capabilities():
    assert LM.capabilities(LM.defaults()).pointwise
    args = {**CLS.defaults(), "classes": 3}
    for pooling, causal in (("mean", False), ("first", False), ("last", True)):
        caps = CLS.capabilities({**args, "pooling": pooling})
        assert caps.causal == causal and caps.bidirectional != causal
        assert not caps.pointwise and not caps.step


def test_lm_head_logits_and_tie_with_token_embedding(build, out_type):
    head = build(LM, 6, vocab=11)
    assert tuple(head.weight.shape) == (11, 6) and head.bias is None
    assert list(head.state_dict()) == ["weight"]
    x = torch.randn(2, 4, 6)
    torch.testing.assert_close(head(x), x @ head.weight.T)
    assert out_type(LM, 6, vocab=11) == TensorType(("batch", "seq", 11))
    with pytest.raises(ShapeError):
        out_type(LM, TensorType(("batch", "seq"), "int"), vocab=11)

    emb = build(embed.TOKEN, TensorType(("batch", "seq"), "int"), vocab=11, dim=6)
    assert emb.weight.shape == head.weight.shape
    head.weight = emb.weight  # what a blueprint's tie: does
    ids = torch.tensor([[3, 7]])
    logits = head(emb(ids))
    logits.sum().backward()
    torch.testing.assert_close(logits, emb(ids) @ emb.weight.T)
    assert head.weight is emb.weight and emb.weight.grad is not None

    with_bias = build(LM, 6, vocab=11, bias=True)
    torch.testing.assert_close(with_bias(x), x @ with_bias.weight.T + with_bias.bias)


def test_classify_pooling_with_and_without_mask(build):
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    for pooling in ("mean", "last", "first"):
        m = build(CLS, 4, classes=3, pooling=pooling).double()
        w, b = m.proj.weight, m.proj.bias
        if pooling == "mean":
            plain = x.mean(1)
            masked = torch.stack([x[i, : int(mask[i].sum())].mean(0) for i in range(3)])
        elif pooling == "last":
            plain = x[:, -1]
            masked = torch.stack([x[i, int(mask[i].sum()) - 1] for i in range(3)])
        else:
            plain = masked = x[:, 0]
        torch.testing.assert_close(m(x), plain @ w.T + b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(m(x, mask=mask), masked @ w.T + b, rtol=1e-12, atol=1e-12)
        # padded positions cannot change the result
        x2 = x.clone()
        x2[~mask] = 100.0
        torch.testing.assert_close(m(x2, mask=mask), m(x, mask=mask), rtol=0, atol=0)


def test_classify_shape_rule_and_grads(build, out_type, grads_reach_all):
    assert out_type(CLS, 8, classes=10) == TensorType(("batch", 10))
    with pytest.raises(ShapeError):
        out_type(CLS, TensorType(("batch", "seq"), "int"), classes=10)
    with pytest.raises(ShapeError, match="sequence"):
        out_type(CLS, TensorType((8,)), classes=10)
    m = build(CLS, 8, classes=10)
    y = m(torch.randn(2, 5, 8))
    assert y.shape == (2, 10)
    y.pow(2).sum().backward()
    grads_reach_all(m)


def test_lm_head_softcap_bounds_the_logits(build, out_type):
    """Gemma 2's final_logit_softcapping: cap · tanh(x Wᵀ / cap); the weight stays tieable."""
    head = build(LM, 6, vocab=11, softcap=3.0).double()
    plain = build(LM, 6, vocab=11).double()
    assert list(head.state_dict()) == ["weight"]
    plain.load_state_dict(head.state_dict())
    x = 10 * torch.randn(2, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(head(x), 3.0 * torch.tanh(plain(x) / 3.0), rtol=1e-12, atol=1e-12)
    assert head(x).abs().max() < 3.0 < plain(x).abs().max()
    with pytest.raises(ShapeError, match="softcap must be above 0"):
        out_type(LM, 6, vocab=11, softcap=-1.0)
