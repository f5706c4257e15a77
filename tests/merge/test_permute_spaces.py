"""What one block declares: its internal permutation spaces leave its outputs unchanged, its
feature declarations (``<input>``, ``<output>``, ``<through>``) permute its outputs alike, and
declarations that do not fit the block's parameters are clear errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ssmgraph.blocks.ffn import MLP_SPEC
from ssmgraph.graph.perm_apply import permute_state
from ssmgraph.graph.perm_spaces import BoundSpace, PermSpaceError, block_io, block_spaces, io_bound_spaces
from ssmgraph.registry.plugins import get_registry
from ssmgraph.registry.specs import PermAxis, PermSpace
from ssmgraph.testing import make_case

F64 = torch.float64
# Variants beyond the specs' own examples: every optional parameter a space depends on.
VARIANTS = {
    "ffn.mlp": [{"hidden": 5, "bias": False}],
    "mix.attention": [{"heads": 4, "kv_heads": 1, "rope": True}, {"heads": 2, "causal": False, "bias": True}],
    "mix.cross_attention": [{"heads": 2, "bias": True}],
    "mix.lstm": [
        {"hidden": 8, "layers": 3},
        {"bidirectional": True, "layers": 2, "hidden": 4},
        {"bidirectional": True, "layers": 2},
        {"layers": 2},
        {"hidden": 8, "bidirectional": True},
    ],
    "mix.mamba": [{"bias": True, "conv_bias": False, "dt_rank": 3, "d_state": 4}],
    "mix.s4d": [{"channels": 3, "bidirectional": True, "d_state": 8}, {"d_state": 8, "glu": False, "channels": 2}],
    "mix.s4": [{"bidirectional": True, "channels": 2, "d_state": 8}, {"measure": "legt", "d_state": 8}],
    "mix.s5": [
        {"d_state": 16, "blocks": 2, "conj_sym": False, "bidirectional": True, "activation": a}
        for a in ("full_glu", "gelu", "half_glu2")
    ],
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


@pytest.mark.parametrize(("block", "args"), BLOCK_CASES, ids=[f"{n}{a or ''}" for n, a in BLOCK_CASES])
def test_declared_permutations_leave_a_blocks_outputs_unchanged(block, args, perturbed, deranged, outputs_diff):
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
def test_declared_features_permute_a_blocks_outputs_alike(block, args, perturbed, deranged, outputs_diff):
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
    for name, args in [
        ("struct.concat", {}),
        ("embed.position", {"max_len": 16, "dim": 8, "kind": "sinusoidal"}),
        ("head.lm", {"vocab": 5}),
    ]:
        case = make_case(name, args)
        io = block_io(case.spec, case.in_types, case.args, case.build(), out_type=case.out_type)
        assert io.output is None and io.through is None, name


def _broken(axes: tuple[PermAxis, ...]):
    return dataclasses.replace(
        MLP_SPEC, perm_spaces=lambda in_types, **_: (PermSpace("hidden", 32, axes),), plugin="broken-plugin"
    )


def test_a_space_on_a_missing_parameter_is_a_clear_error():
    case = make_case("ffn.mlp")
    spec = _broken((PermAxis("fc1.weight", 0), PermAxis("fc3.weight", 1)))
    with pytest.raises(
        PermSpaceError,
        match=r"block ffn.mlp \(plugin broken-plugin\) declares permutation space 'hidden' on 'fc3.weight' axis 1, but there is no parameter 'fc3.weight' \(the module has fc1.weight, fc1.bias, fc2.weight, fc2.bias\)",
    ) as info:
        block_spaces(spec, case.in_types, case.args, case.build())
    assert info.value.code == "E300"


def test_a_space_that_does_not_fit_its_axis_is_a_clear_error():
    case = make_case("ffn.mlp")
    with pytest.raises(
        PermSpaceError,
        match=r"1 chunk\(s\) of 32 units of 2 from index 0 end at 64, past the length 32 of axis 0 of 'fc1.weight' \(32, 8\)",
    ):
        block_spaces(_broken((PermAxis("fc1.weight", 0, group=2),)), case.in_types, case.args, case.build())
    with pytest.raises(PermSpaceError, match=r"'fc1.bias' of shape \(32,\) has no axis 1"):
        block_spaces(_broken((PermAxis("fc1.bias", 1),)), case.in_types, case.args, case.build())


def test_feature_declarations_are_checked():
    case = make_case("ffn.mlp")
    module = case.build()

    def declaring(*spaces):
        return dataclasses.replace(MLP_SPEC, perm_spaces=lambda in_types, **_: spaces, plugin="broken-plugin")

    with pytest.raises(
        PermSpaceError, match=r"names in <> are reserved for '<input>', '<input:PORT>', '<output>' and '<through>'"
    ):
        block_io(declaring(PermSpace("<inptu>", 8, ())), case.in_types, case.args, module)
    with pytest.raises(PermSpaceError, match=r"declares '<output>' of size 6, but its output is float\[batch, seq, 8\]"):
        block_io(declaring(PermSpace("<output>", 6, ())), case.in_types, case.args, module, out_type=case.out_type)
    with pytest.raises(PermSpaceError, match=r"declares '<input:memory>', but its ports are x"):
        block_io(declaring(PermSpace("<input:memory>", 8, ())), case.in_types, case.args, module)
    with pytest.raises(PermSpaceError, match=r"'<through>' together with '<input>' or '<output>'"):
        block_io(declaring(PermSpace("<through>", 8, ()), PermSpace("<output>", 8, ())), case.in_types, case.args, module)
    with pytest.raises(
        PermSpaceError,
        match=r"declares permutation space '<input>' on 'fc9.weight' axis 1, but there is no parameter 'fc9.weight' \(the module has fc1.weight",
    ):
        block_io(declaring(PermSpace("<input>", 8, (PermAxis("fc9.weight", 1),))), case.in_types, case.args, module)
