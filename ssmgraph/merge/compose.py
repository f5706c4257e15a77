"""Put several resolved blueprints into one multi-model blueprint (seeds 000/001).

Each source model's top-level nodes are renamed ``<model>_<node>``; its outputs become
``<model>.<output>``; its hidden states are tapped twice (after each layer of its layer
stack, or after its last mixer) — raw (``<model>.h``) and projected into a common width
(``<model>.p``, a learnable ``stitch.linear``), where feature-consistency losses compare
models; an ``ensemble.<output>`` averages the models' outputs (``struct.mean`` of logits).
With ``share_embedding`` the models read one token embedding: the first model's
``embed.token`` node replaces the others' (they must agree on vocabulary and width).
Views ``<model>`` and ``ensemble`` build each part alone with the joint state-dict names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ssmgraph.merge.context import MergeError

Node = dict[str, Any]


def rename_ref(ref: str, rename: Mapping[str, str]) -> str:
    head, dot, rest = ref.partition(".")
    return rename.get(head, head) + dot + rest


def rename_node(node: Node, rename: Mapping[str, str]) -> Node:
    node = dict(node)
    inputs = node.get("in")
    if isinstance(inputs, str):
        node["in"] = rename_ref(inputs, rename)
    elif isinstance(inputs, list):
        node["in"] = [rename_ref(r, rename) for r in inputs]
    elif isinstance(inputs, dict):
        node["in"] = {port: rename_ref(r, rename) for port, r in inputs.items()}
    if "share" in node:
        node["share"] = rename_ref(node["share"], rename)
    if "tie" in node:
        node["tie"] = {k: rename_ref(r, rename) for k, r in node["tie"].items()}
    return node


def model_taps(taps: Mapping[str, Tensor], model: str, kind: str) -> list[Tensor]:
    """A model's taps of one kind (``h`` raw, ``p`` projected), in layer order."""
    prefix = f"{model}.{kind}"
    found = [(k, v) for k, v in taps.items() if k == prefix or k.startswith(prefix + ".")]
    return [v for _, v in sorted(found, key=lambda kv: int(kv[0].rsplit(".", 1)[1]) if kv[0] != prefix else 0)]


def layer_stacks(blueprint: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(stack node, the body node it carries out)`` for each repeated layer stack."""
    stacks = []
    for name, node in blueprint["nodes"].items():
        body = node.get("body")
        if node.get("repeat") and body and body.get("outputs"):
            stacks.append((name, next(iter(body["outputs"].values()))))
    return stacks


def _tap_point(model: str, bp: Mapping[str, Any], rename: Mapping[str, str]) -> str:
    """Where a model's hidden states are tapped: after each layer of its last layer stack,
    or else after its last top-level sequence mixer (e.g. one multi-layer ``mix.lstm``)."""
    stacks = layer_stacks(bp)
    if stacks:
        stack, out_node = stacks[-1]
        return f"{rename[stack]}.*.{out_node}"
    mixers = [name for name, node in bp["nodes"].items() if str(node.get("block", "")).startswith("mix.")]
    if not mixers:
        raise MergeError(
            f"model {model!r} has neither a layer stack (a `repeat:` node) nor a mix.* node to tap; consistency losses need one"
        )
    return rename[mixers[-1]]


def compose(sources: Mapping[str, Mapping[str, Any]], *, d_common: int, share_embedding: bool = True) -> dict[str, Any]:
    """The joint blueprint (a plain dict, ready for ``Blueprint.from_dict``) of resolved ``sources``."""
    names = list(sources)
    first = sources[names[0]]
    nodes: dict[str, Node] = {}
    outputs: dict[str, str] = {}
    taps: dict[str, Any] = {}
    views: dict[str, Any] = {}
    shared: tuple[str, Node] | None = None
    per_model_outputs: dict[str, list[str]] = {}
    for model, bp in sources.items():
        if bp["inputs"] != first["inputs"]:
            raise MergeError(
                f"models {names[0]!r} and {model!r} read different inputs ({first['inputs']} vs {bp['inputs']}); joint training feeds them one batch"
            )
        rename = {n: f"{model}_{n}" for n in bp["nodes"]}
        for name, node in bp["nodes"].items():
            if share_embedding and node.get("block") == "embed.token":
                if shared is None:
                    shared = (rename[name], node)
                elif node.get("args") != shared[1].get("args"):
                    raise MergeError(
                        f"model {model!r}'s embedding {node.get('args')} differs from {names[0]!r}'s {shared[1].get('args')}; "
                        "a shared embedding needs one vocabulary and width (set d_model alike, or share_embedding: false)"
                    )
                else:
                    rename[name] = shared[0]
        for name, node in bp["nodes"].items():
            if rename[name] == f"{model}_{name}":
                nodes[rename[name]] = rename_node(node, rename)
        at = _tap_point(model, bp, rename)
        taps[f"{model}.h"] = {"at": at}
        taps[f"{model}.p"] = {"at": at, "project": d_common}
        per_model_outputs[model] = []
        for out, target in bp["outputs"].items():
            outputs[f"{model}.{out}"] = rename_ref(target, rename)
            per_model_outputs[model].append(f"{model}.{out}")
        views[model] = {"outputs": per_model_outputs[model], "taps": [f"{model}.h", f"{model}.p"]}
    single = [outs for outs in per_model_outputs.values()]
    if len(names) > 1 and all(len(o) == 1 for o in single):
        out_name = single[0][0].split(".", 1)[1]
        nodes["ensemble"] = {"block": "struct.mean", "in": [outputs[o[0]] for o in single]}
        outputs[f"ensemble.{out_name}"] = "ensemble"
        views["ensemble"] = {"outputs": [f"ensemble.{out_name}"], "taps": []}
    return {
        "ssmgraph": 1,
        "name": "joint_" + "_".join(names),
        "doc": f"{', '.join(names)} trained together"
        + (" on one shared embedding" if share_embedding and shared else "")
        + " (ssmgraph merge, method mutual).",
        "inputs": first["inputs"],
        "nodes": nodes,
        "outputs": outputs,
        "taps": taps,
        "models": views,
    }


def state_from_sources(sources: Mapping[str, Mapping[str, Any]], joint: Any) -> dict[str, Any]:
    """Source weights under their joint names (``<model>_<key>``), where the joint model has
    them. Tied aliases are skipped: with a shared embedding, each model's tied head would
    otherwise write its own embedding into the one shared tensor."""
    joint_state = joint.state_dict()
    out = {}
    for model, state in sources.items():
        for key, value in state.items():
            name = f"{model}_{key}"
            if name in joint_state and name not in joint.tied and joint_state[name].shape == value.shape:
                out[name] = value
    return out
