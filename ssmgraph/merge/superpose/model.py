"""The superposed model: both models' layers read one state; after every layer a ``stitch.blend``
mixes their outputs by α and a ``stitch.autoencoder`` maps the blend back to a hidden state.

The result is a plain blueprint (embedding and head blends included) holding both models'
weights under new names; α and the autoencoders start untrained (:mod:`.training`).

Models of different widths share one state of the larger width: the narrower model's
embedding is padded with zeros into it, each of its layers reads the first coordinates of the
state and writes its output back padded with zeros, and its head reads the first coordinates
(frozen ``stitch.linear`` nodes ``<a|b>_up``, ``_read``, ``_write``, ``_down``). With α at that
model's end and identity autoencoders the superposed model is that model exactly (tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
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
    widths = hidden_widths(a, b)
    width = max(widths.values())
    narrow = {prefix for prefix, w in widths.items() if w < width}
    if narrow and len(bpa["nodes"][sa.name]["body"]["inputs"]) != 1:
        raise MergeError("superposing models of different widths needs layer stacks that carry one input")
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
        if prefix in narrow:  # into the common width
            nodes[f"{prefix}_up"] = _embedding(stack_inputs[-1], width)
            stack_inputs[-1] = f"{prefix}_up"
    nodes["embed_blend"] = {"block": "stitch.blend", "in": {"a": stack_inputs[0], "b": stack_inputs[1]}, "args": blend_args}
    stack_node = bpa["nodes"][sa.name]
    body_nodes: dict[str, Any] = {}
    outs = []
    for prefix, bp, stack in (("a", bpa, sa), ("b", bpb, sb)):
        body = bp["nodes"][stack.name]["body"]
        rename = {n: f"{prefix}_{n}" for n in body["nodes"]}
        if prefix in narrow:  # the layer reads its own width of the common state and writes back into it
            (carried,) = body["inputs"]
            body_nodes[f"{prefix}_read"] = _embedding(carried, widths[prefix])
            rename[carried] = f"{prefix}_read"
        body_nodes.update({rename[n]: rename_node(node, rename) for n, node in body["nodes"].items()})
        outs.append(rename[stack.out_node])
        if prefix in narrow:
            body_nodes[f"{prefix}_write"] = _embedding(outs[-1], width)
            outs[-1] = f"{prefix}_write"
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
        if prefix in narrow:  # the head reads its own width of the final state
            nodes[f"{prefix}_down"] = _embedding(sa.name, widths[prefix])
            rename[stack.name] = f"{prefix}_down"
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


def hidden_widths(a: LoadedModel, b: LoadedModel) -> dict[str, int]:
    """The width of each model's hidden state (``a``, ``b``): what its layers read and write."""
    sa, sb = layer_stack(a), layer_stack(b)
    return {
        "a": a.model.nodes[f"{sa.name}.0.{sa.out_node}"].out_type.dim,
        "b": b.model.nodes[f"{sb.name}.0.{sb.out_node}"].out_type.dim,
    }


def _embedding(ref: str, dim: int) -> dict[str, Any]:
    """A bias-free ``stitch.linear`` node; its weight is set to a coordinate embedding or
    projection (:func:`_coordinates`) and stays frozen."""
    return {"block": "stitch.linear", "in": ref, "args": {"dim": dim, "bias": False}}


def _coordinates(rows: int, cols: int) -> Tensor:
    """[I; 0] (rows > cols: pad with zeros) or [I, 0] (rows < cols: keep the first coordinates)."""
    return torch.eye(max(rows, cols))[:rows, :cols].contiguous()


def superposed_state(a: LoadedModel, b: LoadedModel) -> dict[str, Tensor]:
    """Both models' weights under the superposed blueprint's names: the layers of each stack
    inside A's stack node (named as A's, see :func:`superposed_blueprint`), the rest prefixed;
    a narrower model's maps into and out of the common width (its coordinates: the first ones)."""
    out = {}
    stack_name = layer_stack(a).name
    widths = hidden_widths(a, b)
    width = max(widths.values())
    for prefix, model in (("a", a), ("b", b)):
        stack = layer_stack(model)
        if widths[prefix] < width:
            w = widths[prefix]
            out[f"{prefix}_up.weight"] = _coordinates(width, w)
            out[f"{prefix}_down.weight"] = _coordinates(w, width)
            for layer in range(stack.layers):
                out[f"{stack_name}.{layer}.{prefix}_read.weight"] = _coordinates(w, width)
                out[f"{stack_name}.{layer}.{prefix}_write.weight"] = _coordinates(width, w)
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
