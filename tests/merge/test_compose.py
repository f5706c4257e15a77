"""Composing models into one joint blueprint: shared embedding, taps, views, ensemble."""

from __future__ import annotations

import pytest
import torch

import ssmgraph
from ssmgraph.blueprint import load_blueprint
from ssmgraph.blueprint.yamlsafe import dump_yaml
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.merge.compose import compose, state_from_sources
from ssmgraph.merge.consistency import depth_pairs
from ssmgraph.merge.context import MergeError

SIZES = {"d_model": 16, "vocab": 11}


@pytest.fixture(scope="module")
def sources():
    torch.manual_seed(0)
    return {
        "tf": ssmgraph.build("llama", layers=2, heads=2, **SIZES),
        "mamba": ssmgraph.build("mamba_model", layers=3, **SIZES),
        "lstm": ssmgraph.build("lstm", layers=1, hidden=16, **SIZES),
    }


def joint_of(sources, **kwargs):
    text = dump_yaml(compose({k: m.blueprint.to_dict() for k, m in sources.items()}, d_common=8, **kwargs))
    joint = compile_blueprint(load_blueprint("joint.yaml", text=text))
    joint.load_state_dict(state_from_sources({k: m.state_dict() for k, m in sources.items()}, joint), strict=False)
    return joint.eval()


def test_each_view_computes_its_source_model_exactly(sources):
    joint = joint_of(sources, share_embedding=False)
    x = torch.randint(0, 11, (2, 9))
    out = joint(x)
    for name, model in sources.items():
        torch.testing.assert_close(out[f"{name}.logits"], model.eval()(x), rtol=0, atol=0)
    torch.testing.assert_close(out["ensemble.logits"], torch.stack([out[f"{n}.logits"] for n in sources]).mean(0))
    view = compile_blueprint(joint.blueprint, model="mamba")
    view.load_state_dict({k: v for k, v in joint.state_dict().items() if k in view.state_dict()})
    torch.testing.assert_close(view.eval()(x), out["mamba.logits"])


def test_the_embedding_is_one_tensor_when_shared(sources):
    joint = joint_of(sources)
    embeddings = [k for k in joint.state_dict() if k.endswith("embed.weight")]
    assert embeddings == ["tf_embed.weight"]
    x = torch.randint(0, 11, (2, 9))
    torch.testing.assert_close(joint(x)["tf.logits"], sources["tf"].eval()(x))


def test_taps_follow_each_layer_raw_and_projected(sources):
    joint = joint_of(sources)
    _, taps = joint(torch.randint(0, 11, (2, 9)), taps=True)
    assert sorted(k for k in taps if k.startswith("mamba.h")) == ["mamba.h.0", "mamba.h.1", "mamba.h.2"]
    assert taps["tf.p.1"].shape == (2, 9, 8) and taps["lstm.h"].shape == (2, 9, 16)


def test_different_embeddings_cannot_be_shared(sources):
    other = {"a": sources["tf"], "b": ssmgraph.build("lstm", d_model=8, vocab=11, hidden=8)}
    with pytest.raises(MergeError, match="shared embedding needs one vocabulary and width"):
        joint_of(other)


def test_layers_pair_by_relative_depth():
    assert depth_pairs(2, 4) == [(0, 1), (1, 3)]
    assert depth_pairs(3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert depth_pairs(4, 2) == [(1, 0), (3, 1)]
    assert depth_pairs(1, 3) == [(0, 2)]
