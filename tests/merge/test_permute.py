"""Declared permutation spaces leave outputs unchanged; weight matching undoes a permutation.

Internal spaces (hidden units, heads, channels) and the graph spaces that the blocks' feature
declarations (``<input>``, ``<output>``, ``<through>``) join into: the residual stream."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
import yaml

import ssmgraph
from ssmgraph.blocks.ffn import MLP_SPEC
from ssmgraph.blueprint import builtin_blueprints
from ssmgraph.errors import SsmgraphError
from ssmgraph.graph.compile import example_inputs
from ssmgraph.merge.permute import (
    BoundSpace,
    activation_matching,
    GraphSpace,
    PermSpaceError,
    block_io,
    block_spaces,
    io_bound_spaces,
    model_spaces,
    permute_state,
    random_permutations,
    weight_matching,
)
from ssmgraph.merge.recipe import recipe_from_text
from ssmgraph.merge.run import run_merge
from ssmgraph.registry.plugins import get_registry
from ssmgraph.registry.specs import PermAxis, PermSpace
from ssmgraph.testing import make_case

F64 = torch.float64
# Variants beyond the specs' own examples: every optional parameter a space depends on.
VARIANTS = {
    "ffn.mlp": [{"hidden": 5, "bias": False}],
    "mix.attention": [{"heads": 4, "kv_heads": 1, "rope": True}, {"heads": 2, "causal": False, "bias": True}],
    "mix.cross_attention": [{"heads": 2, "bias": True}],
    "mix.lstm": [{"hidden": 8, "layers": 3}, {"bidirectional": True, "layers": 2, "hidden": 4}, {"bidirectional": True, "layers": 2}, {"layers": 2}, {"hidden": 8, "bidirectional": True}],
    "mix.mamba": [{"bias": True, "conv_bias": False, "dt_rank": 3, "d_state": 4}],
    "mix.s4d": [{"channels": 3, "bidirectional": True, "d_state": 8}, {"d_state": 8, "glu": False, "channels": 2}],
    "mix.s4": [{"bidirectional": True, "channels": 2, "d_state": 8}, {"measure": "legt", "d_state": 8}],
    "mix.s5": [{"d_state": 16, "blocks": 2, "conj_sym": False, "bidirectional": True, "activation": a} for a in ("full_glu", "gelu", "half_glu2")],
    "mix.h3": [{"d_state": 8, "heads": 1}, {"d_state": 8, "heads": 4}],
    "mix.gated_mlp": [{"d_state": 8, "ssm": "s4", "bias": True}],
    # feature declarations (<input>, <output>, <through>) that depend on arguments
    "norm.layer": [{"bias": False}],
    "embed.position": [{"max_len": 16, "dim": 8, "kind": "sinusoidal"}],
    "struct.linear": [{"dim": 8, "bias": False}],
    "stitch.autoencoder": [{"residual": False, "kind": "causal_conv"}, {"bottleneck": 0.5}],
    "stitch.blend": [{"per_feature": True}],
}
DECLARING = sorted(name for name, spec in get_registry().blocks.items() if spec.perm_spaces is not None)
BLOCK_CASES = [(name, args) for name in DECLARING for args in (get_registry().get(name).examples or ({},))] + [
    (name, args) for name, variants in VARIANTS.items() for args in variants
]
SMALL = {"vocab": 11, "d_model": 8, "heads": 4, "kv_heads": 2, "max_len": 16, "hidden": 12, "d_common": 4, "layers": 3, "d_state": 8}


def perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Noise on every parameter and buffer, so that no two units are alike by initialisation
    (Mamba's A_log rows, S4D's real parts): a space missing an axis then changes outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.is_floating_point():
                t.add_(0.05 * torch.randn(t.shape, generator=gen, dtype=t.dtype))
    return module


def deranged(spaces: list[BoundSpace], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random permutations that move every unit's neighbour at least (never the identity)."""
    gen = torch.Generator().manual_seed(seed)
    perms = random_permutations(spaces, gen)
    return {k: p if not torch.equal(p, torch.arange(len(p))) else p.roll(1) for k, p in perms.items()}


def outputs_diff(a, b) -> float:
    if isinstance(a, dict):
        return max(outputs_diff(a[k], b[k]) for k in a)
    return (a - b).abs().max().item()


def small_blueprint(name: str) -> torch.nn.Module:
    params = yaml.safe_load(builtin_blueprints()[name].read_text(encoding="utf-8"))["params"]
    torch.manual_seed(0)
    return ssmgraph.build(name, **{k: v for k, v in SMALL.items() if k in params}).to(F64).eval()


def float64_inputs(model) -> list[torch.Tensor]:
    return [x.to(F64) if x.is_floating_point() else x for x in example_inputs(model, generator=torch.Generator().manual_seed(1))]


@pytest.mark.parametrize(("block", "args"), BLOCK_CASES, ids=[f"{n}{a or ''}" for n, a in BLOCK_CASES])
def test_declared_permutations_leave_a_blocks_outputs_unchanged(block, args):
    case = make_case(block, args)
    module = perturbed(case.build(F64))
    spaces = block_spaces(case.spec, case.in_types, case.args, module)
    if not spaces:
        pytest.skip(f"{case.label} has no space of two units or more")
    x = case.inputs(F64)
    before = module(*x)
    state = {k: v.clone() for k, v in module.state_dict().items()}  # loading writes into state_dict()'s tensors
    perms = deranged(spaces)
    module.load_state_dict(permute_state(state, spaces, perms))
    assert outputs_diff(module(*x), before) < 1e-10
    # Every declared axis is needed: leaving any one of them out changes the outputs.
    for space in spaces:
        for i, axis in enumerate(space.space.axes):
            fewer = dataclasses.replace(space.space, axes=space.space.axes[:i] + space.space.axes[i + 1 :])
            partial = BoundSpace(space.module, space.block, fewer)
            module.load_state_dict(permute_state(state, [partial], {partial.key: perms[space.key]}))
            assert outputs_diff(module(*x), before) > 1e-8, f"{space.key}: the outputs do not depend on {axis}"


@pytest.mark.parametrize(("block", "args"), BLOCK_CASES, ids=[f"{n}{a or ''}" for n, a in BLOCK_CASES])
def test_declared_features_permute_a_blocks_outputs_alike(block, args):
    """Permuting the <input> axes with the inputs' features and the <output> axes (or the
    <through> axes, with both) permutes the outputs' features alike, internal spaces too."""
    case = make_case(block, args)
    module = perturbed(case.build(F64))
    io = block_io(case.spec, case.in_types, case.args, module, out_type=case.out_type)
    if not io.declared:
        pytest.skip(f"{case.label} declares no feature axes")
    features, in_keys, out_key = io_bound_spaces(case.spec.name, io, len(case.in_types))
    spaces = block_spaces(case.spec, case.in_types, case.args, module) + features
    xs = case.inputs(F64)
    before = module(*xs)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    perms = deranged(spaces)
    moved = [x[..., perms[in_keys[i]]] if i in in_keys else x for i, x in enumerate(xs)]
    want = before[..., perms[out_key]] if out_key is not None else before
    module.load_state_dict(permute_state(state, spaces, perms))
    assert outputs_diff(module(*moved), want) < 1e-10
    for space in features:  # every declared feature axis is needed
        for i, axis in enumerate(space.space.axes):
            fewer = dataclasses.replace(space.space, axes=space.space.axes[:i] + space.space.axes[i + 1 :])
            partial = [s if s is not space else BoundSpace("", s.block, fewer) for s in spaces]
            module.load_state_dict(permute_state(state, partial, perms))
            assert outputs_diff(module(*moved), want) > 1e-8, f"{space.key}: the outputs do not depend on {axis}"


def test_blocks_that_declare_no_feature_axes_fix_their_ports():
    for name, args in [("struct.concat", {}), ("embed.position", {"max_len": 16, "dim": 8, "kind": "sinusoidal"}), ("head.lm", {"vocab": 5})]:
        case = make_case(name, args)
        io = block_io(case.spec, case.in_types, case.args, case.build(), out_type=case.out_type)
        assert io.output is None and io.through is None, name


@pytest.mark.parametrize("name", sorted(builtin_blueprints()))
def test_declared_permutations_leave_every_shipped_models_outputs_unchanged(name):
    model = perturbed(small_blueprint(name))
    spaces = model_spaces(model)
    x = float64_inputs(model)
    before = model(*x)
    model.load_state_dict(permute_state(model.state_dict(), spaces, deranged(spaces)))
    assert outputs_diff(model(*x), before) < 1e-10


@pytest.mark.parametrize("name", sorted(builtin_blueprints()))
def test_weight_matching_recovers_a_known_permutation(name):
    a = small_blueprint(name).state_dict()
    spaces = model_spaces(small_blueprint(name))
    perms = deranged(spaces, seed=3)
    b = permute_state(a, spaces, perms)
    found, aligned = weight_matching(a, b, spaces, iters=20, seed=0)
    assert found.keys() == perms.keys()
    for key, perm in perms.items():
        assert torch.equal(found[key], torch.argsort(perm)), key
    assert all(torch.equal(aligned[k], a[k]) for k in a)


@pytest.mark.parametrize(("block", "args"), [("mix.h3", {"d_state": 8, "heads": 2}), ("mix.lstm", {"bidirectional": True, "layers": 3}), ("mix.mamba", {"dt_rank": 3})])
def test_weight_matching_recovers_spaces_that_share_tensors(block, args):
    """Spaces of one block on one tensor (H3 heads and head dimensions on the same rows, LSTM
    layers, Mamba's x_proj) are solved in turn until they agree."""
    case = make_case(block, args)
    module = case.build(F64)
    spaces = block_spaces(case.spec, case.in_types, case.args, module)
    assert len(spaces) >= 3
    a = module.state_dict()
    perms = deranged(spaces, seed=5)
    found, aligned = weight_matching(a, permute_state(a, spaces, perms), spaces, seed=1)
    assert all(torch.equal(found[k], torch.argsort(p)) for k, p in perms.items())
    assert all(torch.equal(aligned[k], a[k]) for k in a)


def test_weight_matching_raises_the_inner_product_of_two_different_models():
    torch.manual_seed(0)
    a = ssmgraph.build("gpt", d_model=16, layers=2, heads=4, vocab=11, max_len=16).state_dict()
    torch.manual_seed(1)
    model_b = ssmgraph.build("gpt", d_model=16, layers=2, heads=4, vocab=11, max_len=16)
    b, spaces = model_b.state_dict(), model_spaces(model_b)
    found, aligned = weight_matching(a, b, spaces, seed=0)
    names = {name for s in spaces for name, _ in s.bound_axes()}

    def inner(state):
        return sum((a[k].double() * state[k].double()).sum().item() for k in names)

    assert inner(aligned) > inner(b)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in found.values())


def test_tied_parameters_keep_their_spaces_out_and_shared_modules_count_once(tmp_path):
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


def _broken(axes: tuple[PermAxis, ...]):
    return dataclasses.replace(MLP_SPEC, perm_spaces=lambda in_types, **_: (PermSpace("hidden", 32, axes),), plugin="broken-plugin")


def test_a_space_on_a_missing_parameter_is_a_clear_error():
    case = make_case("ffn.mlp")
    spec = _broken((PermAxis("fc1.weight", 0), PermAxis("fc3.weight", 1)))
    with pytest.raises(PermSpaceError, match=r"block ffn.mlp \(plugin broken-plugin\) declares permutation space 'hidden' on 'fc3.weight' axis 1, but there is no parameter 'fc3.weight' \(the module has fc1.weight, fc1.bias, fc2.weight, fc2.bias\)") as info:
        block_spaces(spec, case.in_types, case.args, case.build())
    assert info.value.code == "E300"


def test_a_space_that_does_not_fit_its_axis_is_a_clear_error():
    case = make_case("ffn.mlp")
    with pytest.raises(PermSpaceError, match=r"1 chunk\(s\) of 32 units of 2 from index 0 end at 64, past the length 32 of axis 0 of 'fc1.weight' \(32, 8\)"):
        block_spaces(_broken((PermAxis("fc1.weight", 0, group=2),)), case.in_types, case.args, case.build())
    with pytest.raises(PermSpaceError, match=r"'fc1.bias' of shape \(32,\) has no axis 1"):
        block_spaces(_broken((PermAxis("fc1.bias", 1),)), case.in_types, case.args, case.build())


def test_permute_state_rejects_unknown_spaces_and_non_permutations():
    model = small_blueprint("gpt")
    spaces, state = model_spaces(model), model.state_dict()
    with pytest.raises(ValueError, match="no permutation space 'blocks.0.mlp/hidden' among blocks.0.mix/heads"):
        permute_state(state, spaces, {"blocks.0.mlp/hidden": torch.arange(3)})
    with pytest.raises(ValueError, match=r"blocks.0.ffn/hidden must be an integer tensor holding 0..31 once each, got torch.int64 of shape \(32,\): \[0, 0, 0, 0, 0, 0, 0, 0\] ..."):
        permute_state(state, spaces, {"blocks.0.ffn/hidden": torch.zeros(32, dtype=torch.long)})
    lacking = {k: v for k, v in state.items() if k != "blocks.0.ffn.fc1.weight"}
    with pytest.raises(ValueError, match=r"cannot permute blocks.0.ffn/hidden: there is no parameter 'blocks.0.ffn.fc1.weight' \(blocks.0.ffn has fc1.bias, fc2.weight, fc2.bias\)"):
        permute_state(lacking, spaces, deranged(spaces))
    with pytest.raises(ValueError, match=r"cannot match blocks.0.ffn/hidden in model b: there is no parameter 'blocks.0.ffn.fc1.weight'"):
        weight_matching(state, lacking, spaces)


# ---- graph spaces: the residual stream ------------------------------------------------------------
def graph_spaces_of(model) -> list[GraphSpace]:
    return [s for s in model_spaces(model) if isinstance(s, GraphSpace)]


def build_text(tmp_path, text: str):
    path = tmp_path / "model.yaml"
    path.write_text(text)
    torch.manual_seed(0)
    return perturbed(ssmgraph.build(path).to(F64).eval())


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("gpt", {}), ("llama", {}), ("mamba", {}), ("classifier", {"mixer": "mix.mamba"}), ("classifier", {"mixer": "mix.attention"})],
)
def test_the_residual_stream_is_one_space_through_embeddings_norms_mixers_and_heads(name, overrides):
    params = yaml.safe_load(builtin_blueprints()[name].read_text(encoding="utf-8"))["params"]
    model = ssmgraph.build(name, **{k: v for k, v in SMALL.items() if k in params}, **overrides)
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
def test_a_fixed_positional_table_fixes_the_residual_stream(name):
    """Sinusoids are a fixed function of the position: x + PE(pos) in a permuted feature order
    is not a permutation of x + PE(pos), so no residual space survives."""
    params = yaml.safe_load(builtin_blueprints()[name].read_text(encoding="utf-8"))["params"]
    assert graph_spaces_of(ssmgraph.build(name, **{k: v for k, v in SMALL.items() if k in params})) == []


def test_an_lstm_without_residual_connections_has_a_space_per_edge():
    model = small_blueprint("lstm")
    assert [(s.key, s.values) for s in graph_spaces_of(model)] == [("residual:embed", ("embed",)), ("residual:lstm", ("lstm",))]


def test_tap_projections_read_the_permuted_stream_and_their_outputs_stay_put(tmp_path):
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


def test_a_tied_tensor_read_along_an_undeclared_axis_fixes_that_space(tmp_path):
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
    assert [(s.key, s.values) for s in graph_spaces_of(model)] == [("residual:embed", ("embed", "norm")), ("residual:ffn", ("ffn",))]
    x = float64_inputs(model)
    before = model(*x)
    spaces = model_spaces(model)
    model.load_state_dict(permute_state(model.state_dict(), spaces, deranged(spaces)))
    assert outputs_diff(model(*x), before) < 1e-10


def test_feature_declarations_are_checked():
    case = make_case("ffn.mlp")
    module = case.build()

    def declaring(*spaces):
        return dataclasses.replace(MLP_SPEC, perm_spaces=lambda in_types, **_: spaces, plugin="broken-plugin")

    with pytest.raises(PermSpaceError, match=r"names in <> are reserved for '<input>', '<input:PORT>', '<output>' and '<through>'"):
        block_io(declaring(PermSpace("<inptu>", 8, ())), case.in_types, case.args, module)
    with pytest.raises(PermSpaceError, match=r"declares '<output>' of size 6, but its output is float\[batch, seq, 8\]"):
        block_io(declaring(PermSpace("<output>", 6, ())), case.in_types, case.args, module, out_type=case.out_type)
    with pytest.raises(PermSpaceError, match=r"declares '<input:memory>', but its ports are x"):
        block_io(declaring(PermSpace("<input:memory>", 8, ())), case.in_types, case.args, module)
    with pytest.raises(PermSpaceError, match=r"'<through>' together with '<input>' or '<output>'"):
        block_io(declaring(PermSpace("<through>", 8, ()), PermSpace("<output>", 8, ())), case.in_types, case.args, module)
    with pytest.raises(PermSpaceError, match=r"declares permutation space '<input>' on 'fc9.weight' axis 1, but there is no parameter 'fc9.weight' \(the module has fc1.weight"):
        block_io(declaring(PermSpace("<input>", 8, (PermAxis("fc9.weight", 1),))), case.in_types, case.args, module)


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
    with pytest.raises(PermSpaceError, match=r"'f.fc2.weight' axis 1: entries 0..7 lie in space residual:embed and entries 0..31 in space f/hidden"):
        model_spaces(model, registry)


def _train_tiny(seed: int, data: list[tuple[torch.Tensor, torch.Tensor]]):
    torch.manual_seed(seed)
    model = ssmgraph.build("classifier", mixer="mix.mamba", d_model=16, layers=2, classes=2, layer_args={"d_state": 4})
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for x, y in data:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model


def test_aligning_the_residual_stream_matches_two_trained_models_better_than_internal_spaces_alone():
    gen = torch.Generator().manual_seed(0)
    data = []
    for _ in range(30):
        x = torch.randn(32, 12, 1, generator=gen)
        data.append((x, (x.cumsum(1)[:, -1, 0] > 0).long()))
    a, b = _train_tiny(0, data), _train_tiny(1, data)
    state_a, state_b = a.state_dict(), b.state_dict()
    internal, every = model_spaces(b, residual=False), model_spaces(b)
    assert len(every) > len(internal)

    def inner(state):
        return sum((state_a[k].double() * state[k].double()).sum().item() for k in state_a if k not in b.tied)

    _, internal_only = weight_matching(state_a, state_b, internal, seed=0)
    _, with_residual = weight_matching(state_a, state_b, every, seed=0)
    assert inner(state_b) < inner(internal_only) < inner(with_residual)


# ---- activation matching and the recipe's permute step --------------------------------------------
@pytest.mark.parametrize("name", ["gpt", "llama", "mamba"])
def test_activation_matching_recovers_a_known_permutation(name):
    """B is A with every space permuted: its residual stream and its linear layers' units carry
    A's activations in another order, which the correlations find exactly."""
    a = perturbed(small_blueprint(name))
    spaces = model_spaces(a)
    perms = deranged(spaces, seed=4)
    b = copy.deepcopy(a)
    b.load_state_dict(permute_state(a.state_dict(), spaces, perms))
    inputs = [float64_inputs(a) for _ in range(2)]
    found = activation_matching(a, b, spaces, inputs)
    assert any(isinstance(s, GraphSpace) and s.key in found for s in spaces)
    assert len(found) >= 2
    for key, perm in found.items():
        assert torch.equal(perm, torch.argsort(perms[key])), key


def test_weight_matching_keeps_fixed_spaces_and_solves_the_rest():
    a = small_blueprint("gpt").state_dict()
    spaces = model_spaces(small_blueprint("gpt"))
    perms = deranged(spaces, seed=6)
    b = permute_state(a, spaces, perms)
    graph = next(s.key for s in spaces if isinstance(s, GraphSpace))
    found, aligned = weight_matching(a, b, spaces, fixed={graph: torch.argsort(perms[graph])})
    assert all(torch.equal(found[k], torch.argsort(p)) for k, p in perms.items())
    assert all(torch.equal(aligned[k], a[k]) for k in a)
    held, _ = weight_matching(a, b, spaces, fixed={graph: torch.arange(len(perms[graph]))})
    assert torch.equal(held[graph], torch.arange(len(perms[graph])))


@pytest.mark.parametrize("match", ["weights", "activations"])
def test_a_permuted_copy_merges_back_into_the_model(tmp_path, match):
    """linear(a, permuted a) with `permute` is a again: the step undoes the permutation."""
    torch.manual_seed(0)
    model = perturbed(ssmgraph.build("classifier", mixer="mix.mamba", d_model=8, layers=2, layer_args={"d_state": 4}))
    spaces = model_spaces(model)
    ssmgraph.save(model, tmp_path / "a")
    twin = copy.deepcopy(model)
    twin.load_state_dict(permute_state(model.state_dict(), spaces, deranged(spaces, seed=2)))
    ssmgraph.save(twin, tmp_path / "b")
    text = (
        "merge_method: linear\nmodels: [{name: a, checkpoint: a}, {name: b, checkpoint: b}]\n"
        f"permute: {{match: {match}, probe_batches: 2}}\ndata: {{task: digits, batch_size: 16, eval_batches: 1}}\n"
    )
    out, _ = run_merge(recipe_from_text(text, "merge.yaml", tmp_path), tmp_path / "out", progress=False)
    x = torch.randn(3, 10, 1)
    torch.testing.assert_close(ssmgraph.load(out)(x), model(x), rtol=1e-5, atol=1e-5)
    assert json.loads((out / "report.json").read_text())["alignment"]["match"] == match


def test_activation_matching_needs_data(tmp_path):
    torch.manual_seed(0)
    model = ssmgraph.build("classifier", mixer="mix.mamba", d_model=8, layers=1, layer_args={"d_state": 4})
    for name in ("a", "b"):
        ssmgraph.save(model, tmp_path / name)
    text = "merge_method: linear\nmodels: [{name: a, checkpoint: a}, {name: b, checkpoint: b}]\npermute: {match: activations}\n"
    with pytest.raises(SsmgraphError, match=r"merge.yaml:3.*`match: activations` reads the models' activations on data; the recipe has no 'data'"):
        run_merge(recipe_from_text(text, "merge.yaml", tmp_path), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_weight_matching_brings_two_trained_mlps_into_one_basin():
    """Git Re-Basin's MLP result, reproduced: two ReLU MLPs trained on digits from different
    seeds have a loss barrier on the straight line between them; after weight matching over
    their hidden units it (all but) vanishes."""
    from sklearn.datasets import load_digits

    from ssmgraph.merge.weights import linear

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y)
    width, hidden_layers = 128, 3

    def train(seed: int) -> torch.nn.Sequential:
        torch.manual_seed(seed)
        dims = [64] + [width] * hidden_layers
        layers: list[torch.nn.Module] = []
        for d_in, d_out in zip(dims, dims[1:]):
            layers += [torch.nn.Linear(d_in, d_out), torch.nn.ReLU()]
        model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(600):
            batch = torch.randint(0, 1400, (64,), generator=generator)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        return model

    a, b = train(0), train(1)
    state_a, state_b = a.state_dict(), b.state_dict()
    spaces = [
        GraphSpace(f"hidden{i}", width, (PermAxis(f"{2 * i}.weight", 0), PermAxis(f"{2 * i}.bias", 0), PermAxis(f"{2 * i + 2}.weight", 1)), ())
        for i in range(hidden_layers)
    ]
    _, aligned = weight_matching(state_a, state_b, spaces)

    def barrier(state_b: dict[str, torch.Tensor]) -> float:
        model, losses = copy.deepcopy(a), []
        for t in torch.linspace(0, 1, 11).tolist():
            model.load_state_dict(linear([state_a, state_b], [1 - t, t]))
            with torch.no_grad():
                losses.append(torch.nn.functional.cross_entropy(model(x[1400:]), y[1400:]).item())
        return max(loss - ((1 - i / 10) * losses[0] + i / 10 * losses[-1]) for i, loss in enumerate(losses))

    naive, after = barrier(state_b), barrier(aligned)
    assert naive > 0.3
    assert after < 0.1 * naive
