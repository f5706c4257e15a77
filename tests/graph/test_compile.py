"""The compiler against independent references: a hand-written GPT, storage checks, views."""

from __future__ import annotations

import pytest
import torch

import ssmgraph
from ssmgraph.blueprint import load_blueprint
from ssmgraph.graph.compile import compile_blueprint, count_parameters
from ssmgraph.testing.reference import GPT

D, HEADS, LAYERS, VOCAB, CTX = 32, 4, 2, 50, 64


def gpt(**params: int) -> ssmgraph.CompiledModel:
    return ssmgraph.build("gpt", **{"vocab": VOCAB, "d_model": D, "layers": LAYERS, "heads": HEADS, "max_len": CTX, **params})


def test_compiled_gpt_equals_hand_written_gpt_with_same_weights() -> None:
    torch.manual_seed(0)
    model, hand = gpt().double(), GPT(VOCAB, D, LAYERS, HEADS, CTX).double()
    hand.load_from_blueprint_model(model)
    tokens = torch.randint(0, VOCAB, (3, 17))
    torch.testing.assert_close(model(tokens), hand(tokens), rtol=1e-12, atol=1e-12)
    grads_model = torch.autograd.grad(model(tokens).square().sum(), model.embed.weight)[0]
    grads_hand = torch.autograd.grad(hand(tokens).square().sum(), hand.wte.weight)[0]
    torch.testing.assert_close(grads_model, grads_hand, rtol=1e-10, atol=1e-10)


def test_state_dict_names_follow_node_paths() -> None:
    keys = set(gpt().state_dict())
    assert {"embed.weight", "blocks.1.mix.qkv.weight", "blocks.0.ffn.fc2.bias", "head.weight"} <= keys
    assert count_parameters(gpt()) < sum(v.numel() for v in gpt().state_dict().values())  # tied counted once


def test_tie_shares_storage_and_gradient() -> None:
    model = gpt()
    assert model.head.weight is model.embed.weight
    assert model.state_dict()["head.weight"].data_ptr() == model.state_dict()["embed.weight"].data_ptr()
    model(torch.randint(0, VOCAB, (2, 5))).sum().backward()
    assert model.embed.weight.grad is not None
    assert model.tied == {"head.weight": "embed.weight"}


def test_save_load_round_trip_identical_outputs(tmp_path) -> None:
    torch.manual_seed(1)
    model = gpt()
    tokens = torch.randint(0, VOCAB, (2, 9))
    ssmgraph.save(model, tmp_path / "run")
    loaded = ssmgraph.load(tmp_path / "run")
    assert torch.equal(loaded(tokens), model(tokens))
    assert loaded.head.weight is loaded.embed.weight
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert "head.weight" not in keys and "embed.weight" in keys  # a tied tensor once


def test_save_is_atomic_when_interrupted(tmp_path, monkeypatch) -> None:
    model = gpt()
    ssmgraph.save(model, tmp_path / "run")
    before = ssmgraph.load(tmp_path / "run").state_dict()

    from ssmgraph import serialization

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(serialization, "save_file", crash)
    with torch.no_grad():
        model.embed.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        ssmgraph.save(model, tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary left behind
    after = ssmgraph.load(tmp_path / "run").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resolved_blueprint_rebuilds_same_graph(tmp_path) -> None:
    model = ssmgraph.build("seq2seq", d_model=32, heads=2, enc_layers=1, dec_layers=2)
    ssmgraph.save(model, tmp_path / "m")
    text = (tmp_path / "m" / "blueprint.yaml").read_text()
    assert "$" not in text and "use:" not in text  # params substituted, fragments inlined
    assert list(ssmgraph.load(tmp_path / "m").state_dict()) == list(model.state_dict())


def test_step_and_generate_match_forward() -> None:
    torch.manual_seed(2)
    for name in ("gpt", "lstm", "transformer"):
        model = ssmgraph.build(name, d_model=32, vocab=VOCAB).double()
        tokens = torch.randint(0, VOCAB, (2, 8))
        full = model(tokens)
        state = model.init_state(2)
        steps = []
        for t in range(tokens.shape[1]):
            logits, state = model.step(tokens[:, t], state=state)
            steps.append(logits)
        torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-9, atol=1e-9)
        out = model.generate(tokens[:, :3], 5, temperature=0)
        for t in range(3, 8):  # greedy tokens are the argmax of the full forward on the prefix
            assert torch.equal(out[:, t], model(out[:, :t])[:, -1].argmax(-1))


def test_generate_fills_learned_positions_to_the_end_and_refuses_bad_calls() -> None:
    model = ssmgraph.build("gpt", vocab=VOCAB, d_model=16, layers=1, heads=2, max_len=8).eval()
    prompt = torch.randint(0, VOCAB, (1, 6))
    assert model.generate(prompt, 3, temperature=0).shape == (1, 9)  # the 9th token is read by no position
    with pytest.raises(ValueError, match="past the learned position embedding's max_len 8"):
        model.generate(prompt, 4, temperature=0)
    with pytest.raises(ssmgraph.SsmgraphError, match="at least one token"):
        model.generate(prompt[:, :0], 2)
    with pytest.raises(ssmgraph.SsmgraphError, match="top_k must be at least 1"):
        model.generate(prompt, 2, top_k=0)


@pytest.mark.parametrize("name", ["gpt", "llama", "mamba", "lstm", "transformer"])
def test_forward_with_state_reads_chunks_like_one_pass_and_steps_on(name: str) -> None:
    """The parallel prefill: its outputs are the forward's, its state continues the sequence
    exactly as stepping token by token does, and chunks with the state carried equal one pass."""
    torch.manual_seed(3)
    model = ssmgraph.build(name, d_model=32, vocab=VOCAB).double()
    tokens = torch.randint(0, VOCAB, (2, 9))
    full = model(tokens)
    out, state = model.forward_with_state(tokens[:, :6])
    torch.testing.assert_close(out, full[:, :6], rtol=1e-9, atol=1e-9)
    rest, _ = model.forward_with_state(tokens[:, 6:], state=state)
    torch.testing.assert_close(rest, full[:, 6:], rtol=1e-9, atol=1e-9)
    logits, _ = model.step(tokens[:, 6], state=state)
    torch.testing.assert_close(logits, full[:, 6], rtol=1e-9, atol=1e-9)


def test_taps_and_views_of_a_multi_model_blueprint() -> None:
    joint = ssmgraph.build("pair", d_model=32, layers=2, d_common=8)
    tokens = torch.randint(0, 256, (2, 6))
    outs, feats = joint(tokens, taps=True)
    assert set(outs) == {"transformer.logits", "lstm.logits"}
    assert sorted(feats) == ["lstm.h.0", "lstm.h.1", "transformer.h.0", "transformer.h.1"]
    assert all(f.shape == (2, 6, 8) for f in feats.values())
    lstm_only = ssmgraph.build("pair", d_model=32, layers=2, d_common=8, model="lstm")
    assert set(lstm_only.state_dict()) < set(joint.state_dict())
    assert not any(k.startswith("tf.") for k in lstm_only.state_dict())
    lstm_only.load_state_dict({k: v for k, v in joint.state_dict().items() if k in lstm_only.state_dict()})
    torch.testing.assert_close(lstm_only(tokens), outs["lstm.logits"])
    _, some = joint(tokens, taps=["lstm.h"])
    assert sorted(some) == ["lstm.h.0", "lstm.h.1"]


def test_share_calls_one_module_twice() -> None:
    model = ssmgraph.build("seq2seq", d_model=32, heads=2, enc_layers=1, dec_layers=1)
    assert model.nodes["tgt_embed"].module_path == "embed"
    assert not hasattr(model, "tgt_embed")
    src, tgt = torch.randint(0, 256, (2, 7)), torch.randint(0, 256, (2, 4))
    assert model(src, tgt).shape == (2, 4, 256)
    assert model(src=src, tgt=tgt).shape == (2, 4, 256)


BODY = """
ssmgraph: 1
params: {d: 16}
inputs: {tokens: {dtype: int64}}
nodes:
  embed: {block: embed.token, in: tokens, args: {vocab: 10, dim: $d}}
  blocks:
    repeat: 4
    in: embed
    carry: x
    share_weights: %s
    body:
      inputs: [x]
      nodes:
        mix: {block: ffn.mlp, in: x, args: {hidden: 8}}
        out: {block: struct.add, in: [x, mix]}
      outputs: {x: out}
    %s
  head: {block: head.lm, in: blocks, args: {vocab: 10}}
outputs: {logits: head}
"""


def test_share_weights_reuses_layer_zero() -> None:
    model = compile_blueprint(load_blueprint("t.yaml", text=BODY % ("true", "")))
    assert {k.split(".")[1] for k in model.state_dict() if k.startswith("blocks.")} == {"0"}
    assert model.nodes["blocks.3.mix"].module_path == "blocks.0.mix"


def test_per_index_overrides_change_only_their_layers() -> None:
    model = compile_blueprint(
        load_blueprint("t.yaml", text=BODY % ("false", 'at: {"1,-1": {nodes: {mix: {block: ffn.glu, args: {hidden: 8}}}}}'))
    )
    blocks = [model.nodes[f"blocks.{i}.mix"].block for i in range(4)]
    assert blocks == ["ffn.mlp", "ffn.glu", "ffn.mlp", "ffn.glu"]


def test_forward_is_generated_straight_line_code() -> None:
    source = gpt().generated_source
    assert "for " not in source and 'getattr(self.blocks, "1").mix' in source


@pytest.mark.parametrize("name", ["gpt", "lstm", "seq2seq", "pair"])
def test_torch_compile_fullgraph(name: str) -> None:
    """Dynamo traces every shipped model in one graph (nn.LSTM needs its experimental RNN flag)."""
    from ssmgraph.graph.compile import example_inputs

    model = ssmgraph.build(name, d_model=32)
    inputs = example_inputs(model, seq=8)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        torch.testing.assert_close(compiled(*inputs), model(*inputs))


def test_param_groups_follow_hints() -> None:
    model = gpt()
    groups = ssmgraph.param_groups(model, lr=1e-3, weight_decay=0.1)
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len({id(p) for p in model.parameters()})
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.get_submodule("blocks.0.mix.qkv").weight) in decayed
    assert id(model.norm_f.weight) not in decayed


def test_reserved_names_cover_the_compiled_model_members() -> None:
    from ssmgraph.blueprint.names import RESERVED

    members = {n for n in vars(ssmgraph.CompiledModel) if not n.startswith("_")}
    instance = {n for n in vars(gpt()) if not n.startswith("_")}
    assert members | instance <= RESERVED
