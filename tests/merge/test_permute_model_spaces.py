"""A compiled model's permutation spaces: its blocks' internal spaces, and the graph spaces their
feature declarations (``<input>``, ``<output>``, ``<through>``) join into — the residual stream.
Permuting any of them leaves the model's outputs unchanged."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

import ssmgraph
from ssmgraph.blocks.ffn import MLP_SPEC
from ssmgraph.blueprint import builtin_blueprints
from ssmgraph.graph.perm_apply import permute_state
from ssmgraph.graph.perm_spaces import GraphSpace, PermSpaceError
from ssmgraph.merge.permute.model_spaces import model_spaces
from ssmgraph.registry.plugins import get_registry
from ssmgraph.registry.specs import PermAxis, PermSpace

F64 = torch.float64


@pytest.mark.parametrize("name", sorted(builtin_blueprints()))
def test_declared_permutations_leave_every_shipped_models_outputs_unchanged(
    name, perturbed, deranged, outputs_diff, small_blueprint, float64_inputs
):
    model = perturbed(small_blueprint(name))
    spaces = model_spaces(model)
    x = float64_inputs(model)
    before = model(*x)
    model.load_state_dict(permute_state(model.state_dict(), spaces, deranged(spaces)))
    assert outputs_diff(model(*x), before) < 1e-10


def test_tied_parameters_keep_their_spaces_out_and_shared_modules_count_once(tmp_path, deranged, outputs_diff):
    path = tmp_path / "tied.yaml"
    path.write_text(
        "ssmgraph: 1\nname: tied\ninputs:\n  x: {dtype: float32, shape: [batch, seq, 8]}\nnodes:\n"
        "  f1: {block: ffn.mlp, in: x}\n"
        "  f2: {block: ffn.mlp, in: f1, tie: {fc1.weight: f1.fc1.weight}}\n"
        "  f3: {block: ffn.mlp, in: f2}\n"
        "  f4: {share: f3, in: f3}\n"
        "outputs:\n  y: f4\n"
    )
    model = ssmgraph.build(path).to(F64)
    spaces = model_spaces(model)
    assert [s.key for s in spaces] == ["f3/hidden"]
    x = torch.randn(2, 5, 8, dtype=F64)
    before = model(x)
    model.load_state_dict(permute_state(model.state_dict(), spaces, deranged(spaces)))
    assert outputs_diff(model(x), before) < 1e-10


# ---- graph spaces: the residual stream ------------------------------------------------------------
def graph_spaces_of(model) -> list[GraphSpace]:
    return [s for s in model_spaces(model) if isinstance(s, GraphSpace)]


@pytest.fixture
def build_text(perturbed):
    """``build_text(tmp_path, text)``: a model from blueprint text, float64, perturbed, in eval mode."""

    def build(tmp_path, text: str):
        path = tmp_path / "model.yaml"
        path.write_text(text)
        torch.manual_seed(0)
        return perturbed(ssmgraph.build(path).to(F64).eval())

    return build


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("gpt", {}),
        ("llama", {}),
        ("mamba", {}),
        ("classifier", {"mixer": "mix.mamba"}),
        ("classifier", {"mixer": "mix.attention"}),
    ],
)
def test_the_residual_stream_is_one_space_through_embeddings_norms_mixers_and_heads(name, overrides, small_params):
    params = yaml.safe_load(builtin_blueprints()[name].read_text(encoding="utf-8"))["params"]
    model = ssmgraph.build(name, **{k: v for k, v in small_params.items() if k in params}, **overrides)
    (space,) = graph_spaces_of(model)
    assert space.key == "residual:embed" and space.size == 8
    params = {axis.param for axis in space.axes}
    norms = [p for p in model.state_dict() if ".norm" in p and p.endswith("weight")]
    assert norms and set(norms) <= params
    assert any(p.endswith("mix.out_proj.weight") for p in params)
    assert ("head.proj.weight" if name == "classifier" else "head.weight" if name == "llama" else "embed.weight") in params
    if name in ("gpt", "mamba"):  # the head's weight is the embedding's: permuted once, by the owner's name
        assert "head.weight" not in params and ("head.weight", "embed.weight") in space.ties


@pytest.mark.parametrize("name", ["transformer", "seq2seq", "pair"])
def test_a_fixed_positional_table_fixes_the_residual_stream(name, small_params):
    """Sinusoids are a fixed function of the position: x + PE(pos) in a permuted feature order
    is not a permutation of x + PE(pos), so no residual space survives."""
    params = yaml.safe_load(builtin_blueprints()[name].read_text(encoding="utf-8"))["params"]
    assert graph_spaces_of(ssmgraph.build(name, **{k: v for k, v in small_params.items() if k in params})) == []


def test_an_lstm_without_residual_connections_has_a_space_per_edge(small_blueprint):
    model = small_blueprint("lstm")
    assert [(s.key, s.values) for s in graph_spaces_of(model)] == [("residual:embed", ("embed",)), ("residual:lstm", ("lstm",))]


def test_tap_projections_read_the_permuted_stream_and_their_outputs_stay_put(
    tmp_path, build_text, deranged, outputs_diff, float64_inputs
):
    model = build_text(
        tmp_path,
        "ssmgraph: 1\nname: tapped\ninputs:\n  tokens: {dtype: int64, shape: [batch, seq]}\nnodes:\n"
        "  embed: {block: embed.token, in: tokens, args: {vocab: 11, dim: 8}}\n"
        "  blocks: {repeat: 2, in: embed, use: fragments/residual.yaml, args: {mixer: mix.mamba, mixer_args: {d_state: 4}}}\n"
        "  head: {block: head.lm, in: blocks, args: {vocab: 11}}\n"
        "outputs:\n  logits: head\n"
        "taps:\n  h: {at: blocks.*.out, project: 4}\n  raw: {at: blocks.0.out}\n",
    )
    (space,) = graph_spaces_of(model)
    assert {"taps.h.0.weight", "taps.h.1.weight"} <= {a.param for a in space.axes}
    assert not any(a.param.startswith("taps.") and not a.param.endswith("weight") for a in space.axes)
    x = float64_inputs(model)
    logits, taps = model(*x, taps=True)
    spaces = model_spaces(model)
    perms = deranged(spaces)
    model.load_state_dict(permute_state(model.state_dict(), spaces, perms))
    logits2, taps2 = model(*x, taps=True)
    assert outputs_diff(logits2, logits) < 1e-10
    assert outputs_diff(taps2["h.0"], taps["h.0"]) < 1e-10 and outputs_diff(taps2["h.1"], taps["h.1"]) < 1e-10
    assert outputs_diff(taps2["raw"], taps["raw"][..., perms[space.key]]) < 1e-10  # an unprojected tap is the stream itself


def test_a_tied_tensor_read_along_an_undeclared_axis_fixes_that_space(
    tmp_path, build_text, deranged, outputs_diff, float64_inputs
):
    """lin's weight is the embedding table: its rows (lin's outputs) are token ids to the
    embedding, so lin's output space is fixed; its columns are the embedding's features."""
    model = build_text(
        tmp_path,
        "ssmgraph: 1\nname: tied\ninputs:\n  tokens: {dtype: int64, shape: [batch, seq]}\nnodes:\n"
        "  embed: {block: embed.token, in: tokens, args: {vocab: 11, dim: 8}}\n"
        "  norm: {block: norm.layer, in: embed}\n"
        "  lin: {block: struct.linear, in: norm, args: {dim: 11, bias: false}, tie: {weight: embed.weight}}\n"
        "  ffn: {block: ffn.mlp, in: lin}\n"
        "  head: {block: struct.linear, in: ffn, args: {dim: 3}}\n"
        "outputs:\n  y: head\n",
    )
    assert [(s.key, s.values) for s in graph_spaces_of(model)] == [
        ("residual:embed", ("embed", "norm")),
        ("residual:ffn", ("ffn",)),
    ]
    x = float64_inputs(model)
    before = model(*x)
    spaces = model_spaces(model)
    model.load_state_dict(permute_state(model.state_dict(), spaces, deranged(spaces)))
    assert outputs_diff(model(*x), before) < 1e-10


def test_a_tensor_axis_in_two_spaces_is_a_clear_error(tmp_path, monkeypatch):
    """An <output> declared on rows that an internal space also moves would permute them twice."""
    bad = dataclasses.replace(
        MLP_SPEC,
        perm_spaces=lambda in_types, **_: (
            PermSpace("hidden", 32, (PermAxis("fc1.weight", 0), PermAxis("fc2.weight", 1))),
            PermSpace("<input>", 8, (PermAxis("fc2.weight", 1, start=0),)),
            PermSpace("<output>", 8, (PermAxis("fc2.weight", 0),)),
        ),
    )
    registry = get_registry()
    monkeypatch.setitem(registry.blocks, "ffn.mlp", bad)
    path = tmp_path / "m.yaml"
    path.write_text(
        "ssmgraph: 1\nname: m\ninputs:\n  tokens: {dtype: int64, shape: [batch, seq]}\nnodes:\n"
        "  embed: {block: embed.token, in: tokens, args: {vocab: 11, dim: 8}}\n"
        "  f: {block: ffn.mlp, in: embed}\n  head: {block: head.lm, in: f, args: {vocab: 11}}\noutputs:\n  y: head\n"
    )
    model = ssmgraph.build(path)
    with pytest.raises(
        PermSpaceError,
        match=r"'f.fc2.weight' axis 1: entries 0..7 lie in space residual:embed and entries 0..31 in space f/hidden",
    ):
        model_spaces(model, registry)
