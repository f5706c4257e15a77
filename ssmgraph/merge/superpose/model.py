"""The superposed model: both models' layers read one state; after every layer a ``stitch.blend``
mixes their outputs by α and a ``stitch.autoencoder`` maps the blend back to a hidden state.

The result is a plain blueprint (embedding and head blends included) holding both models'
weights under new names; α and the autoencoders start untrained (:mod:`.training`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ssmgraph.blueprint import Blueprint
from ssmgraph.graph.compile import compile_blueprint
from ssmgraph.graph.model import CompiledModel
from ssmgraph.merge.compose import rename_node, rename_ref
from ssmgraph.merge.context import MergeError
from ssmgraph.merge.models import LoadedModel, blueprint_of
from ssmgraph.merge.stitch import layer_stack


def superposed_blueprint(a: LoadedModel, b: LoadedModel, params: Mapping[str, Any]) -> dict[str, Any]:
    """Both models' nodes side by side, a blend + autoencoder after every layer (plain dict)."""
    sa, sb = layer_stack(a), layer_stack(b)
    bpa, bpb = blueprint_of(a.model), blueprint_of(b.model)
    if sa.layers != sb.layers:
        raise MergeError(
            f"superposition pairs layers one to one; {a.name!r} has {sa.layers} and {b.name!r} has {sb.layers} (try stitch)"
        )
    if bpa["inputs"] != bpb["inputs"] or len(bpa["outputs"]) != 1 or len(bpb["outputs"]) != 1:
        raise MergeError("superposition needs two models with the same inputs and one output each")
    width = a.model.nodes[f"{sa.name}.0.{sa.out_node}"].out_type.dim
    if b.model.nodes[f"{sb.name}.0.{sb.out_node}"].out_type.dim != width:
        raise MergeError(f"superposition blends hidden states of one width; {a.name!r} and {b.name!r} differ (try stitch)")
    blend_args = {"per_feature": params["alpha"] == "vector"}
    ae_args = {"kind": params["autoencoder"], "bottleneck": params["bottleneck"], "kernel": params["kernel"]}
    nodes: dict[str, Any] = {}
    stack_inputs = []
    for prefix, bp, stack in (("a", bpa, sa), ("b", bpb, sb)):
        rename = {n: f"{prefix}_{n}" for n in stack.before + stack.after}
        rename[stack.name] = stack.name
        for n in stack.before:
            nodes[rename[n]] = rename_node(bp["nodes"][n], rename)
        stack_inputs.append(rename_ref(bp["nodes"][stack.name]["in"], rename))
    nodes["embed_blend"] = {"block": "stitch.blend", "in": {"a": stack_inputs[0], "b": stack_inputs[1]}, "args": blend_args}
    stack_node = bpa["nodes"][sa.name]
    body_nodes: dict[str, Any] = {}
    outs = []
    for prefix, bp, stack in (("a", bpa, sa), ("b", bpb, sb)):
        body = bp["nodes"][stack.name]["body"]
        rename = {n: f"{prefix}_{n}" for n in body["nodes"]}
        body_nodes.update({rename[n]: rename_node(node, rename) for n, node in body["nodes"].items()})
        outs.append(rename[stack.out_node])
    if bpa["nodes"][sa.name]["body"]["inputs"] != bpb["nodes"][sb.name]["body"]["inputs"]:
        raise MergeError("the two layer stacks name their carried input differently; rename one blueprint's carry")
    body_nodes["blend"] = {"block": "stitch.blend", "in": {"a": outs[0], "b": outs[1]}, "args": blend_args}
    body_nodes["ae"] = {"block": "stitch.autoencoder", "in": "blend", "args": ae_args}
    carry = next(iter(stack_node["body"]["outputs"]))
    nodes[sa.name] = {
        "in": "embed_blend",
        "repeat": sa.layers,
        "carry": stack_node.get("carry", carry),
        "body": {"inputs": stack_node["body"]["inputs"], "nodes": body_nodes, "outputs": {carry: "ae"}},
    }
    heads = []
    for prefix, bp, stack in (("a", bpa, sa), ("b", bpb, sb)):
        rename = {n: f"{prefix}_{n}" for n in stack.before + stack.after}
        rename[stack.name] = sa.name
        for n in stack.after:
            nodes[rename[n]] = rename_node(bp["nodes"][n], rename)
        heads.append(rename_ref(next(iter(bp["outputs"].values())), rename))
    nodes["logits_blend"] = {"block": "stitch.blend", "in": {"a": heads[0], "b": heads[1]}}
    return {
        "ssmgraph": 1,
        "name": f"superpose_{a.name}_{b.name}",
        "doc": f"{a.name!r} and {b.name!r} in superposition: both models' layers read one state, blended by α and an autoencoder (ssmgraph merge, method superpose).",
        "inputs": bpa["inputs"],
        "nodes": nodes,
        "outputs": {next(iter(bpa["outputs"])): "logits_blend"},
        "taps": {"hidden": {"at": f"{sa.name}.*.ae"}},
    }


def superposed_state(a: LoadedModel, b: LoadedModel) -> dict[str, Tensor]:
    """Both models' weights under the superposed blueprint's names: the layers of each stack
    inside A's stack node (named as A's, see :func:`superposed_blueprint`), the rest prefixed."""
    out = {}
    stack_name = layer_stack(a).name
    for prefix, model in (("a", a), ("b", b)):
        stack = layer_stack(model)
        for key, value in model.model.state_dict().items():
            head, _, rest = key.partition(".")
            if head == stack.name:
                layer, _, tail = rest.partition(".")
                out[f"{stack_name}.{layer}.{prefix}_{tail}"] = value
            else:
                out[f"{prefix}_{key}"] = value
    return out


def blends(model: CompiledModel, layers: int) -> list[tuple[nn.Module, float]]:
    """Each blend module and its normalised depth: the embedding at 0, layer l at (l+1)/(L+1), the head at 1."""
    modules = dict(model.named_modules())
    found = [(modules["embed_blend"], 0.0)]
    found += [(modules[name], (i + 1) / (layers + 1)) for i, name in enumerate(n for n in modules if n.endswith(".blend"))]
    found.append((modules["logits_blend"], 1.0))
    return found


def build_superposed(a: LoadedModel, b: LoadedModel, params: Mapping[str, Any]) -> CompiledModel:
    """The superposed model of ``a`` and ``b`` with both models' weights; blends and autoencoders freshly initialised."""
    model = compile_blueprint(Blueprint.from_dict(superposed_blueprint(a, b, params), source="<superposed blueprint>"))
    state = superposed_state(a, b)
    result = model.load_state_dict(state, strict=False)
    sources_missing = [
        k
        for k in result.missing_keys
        if ".blend." not in k and ".ae." not in k and not k.startswith(("embed_blend", "logits_blend")) and k not in model.tied
    ]
    if sources_missing or result.unexpected_keys:
        raise MergeError(f"superposed weights do not fit: missing {sources_missing[:3]}, unexpected {result.unexpected_keys[:3]}")
    return model
