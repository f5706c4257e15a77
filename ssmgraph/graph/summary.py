"""What a compiled model holds: per node its block, output shape and parameter count."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from ssmgraph.graph.compile import count_parameters
from ssmgraph.graph.model import CompiledModel
from ssmgraph.registry.specs import TensorType


def _shape(ttype: TensorType) -> list[int | str]:
    return list(ttype.shape)


def node_parameter_counts(model: CompiledModel) -> dict[str, int]:
    """Parameters per node; a shared or tied tensor counts at its first user only."""
    seen: set[int] = set()
    counts: dict[str, int] = {}
    for path in model.order:
        module = model.get_submodule(model.nodes[path].module_path)
        total = 0
        for param in module.parameters():
            if id(param) not in seen:
                seen.add(id(param))
                total += param.numel()
        counts[path] = total
    return counts


def tap_projection_parameters(model: CompiledModel) -> int:
    """Parameters of the taps' projections, which belong to no node (so the node counts plus
    these make the total)."""
    in_nodes = {id(p) for path in model.order for p in model.get_submodule(model.nodes[path].module_path).parameters()}
    return sum(p.numel() for name, p in model.named_parameters() if name.startswith("taps.") and id(p) not in in_nodes)


def summarize(model: CompiledModel) -> dict[str, Any]:
    counts = node_parameter_counts(model)
    return {
        "name": model.blueprint.name,
        "model": model.view,
        "parameters": count_parameters(model),
        "tap_parameters": tap_projection_parameters(model),
        "inputs": {name: {"dtype": t.dtype, "shape": _shape(t)} for name, t in model.input_types.items()},
        "outputs": {
            name: _shape(model.nodes[value].out_type) if value in model.nodes else _shape(model.input_types[value])
            for name, value in model.outputs.items()
        },
        "taps": {name: value for name, value in model.tap_sources.items()},
        "tied": dict(model.tied),
        "supports_step": model.supports_step,
        "nodes": [
            {
                "path": path,
                "block": info.block,
                "plugin": info.plugin,
                "inputs": list(info.inputs),
                "shape": _shape(info.out_type),
                "parameters": counts[path],
                "shares": info.module_path if info.module_path != path else None,
            }
            for path, info in model.nodes.items()
        ],
    }


def summary_table(model: CompiledModel) -> Table:
    data = summarize(model)
    title = f"{data['name']}" + (f" (model {data['model']})" if data["model"] else "")
    table = Table(title=escape(title), caption=escape(_caption(data)), show_lines=False)
    table.add_column("node", style="cyan", no_wrap=True)
    table.add_column("block", style="magenta")
    table.add_column("output shape")
    table.add_column("params", justify="right")
    for node in data["nodes"]:
        block = node["block"] + (f" (shares {node['shares']})" if node["shares"] else "")
        shape = "[" + ", ".join(map(str, node["shape"])) + "]"
        table.add_row(escape(node["path"]), escape(block), escape(shape), f"{node['parameters']:,}")
    return table


def _caption(data: dict[str, Any]) -> str:
    parts = [f"{data['parameters']:,} parameters"]
    parts.append("outputs: " + ", ".join(f"{k} [{', '.join(map(str, v))}]" for k, v in data["outputs"].items()))
    if data["tied"]:
        parts.append("tied: " + ", ".join(f"{a} = {b}" for a, b in data["tied"].items()))
    if data["taps"]:
        projections = f" ({data['tap_parameters']:,} parameters in their projections)" if data["tap_parameters"] else ""
        parts.append(f"{len(data['taps'])} taps{projections}")
    parts.append("step-by-step decoding: " + ("yes" if data["supports_step"] else "no"))
    return " · ".join(parts)
