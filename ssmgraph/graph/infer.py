"""Check every node against its block spec and infer every edge's type, before any tensor exists."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import networkx as nx

from ssmgraph.blueprint.document import Blueprint, NodeDecl
from ssmgraph.errors import Collector, did_you_mean
from ssmgraph.graph.expanded import Expanded, GraphNode
from ssmgraph.registry.plugins import Registry
from ssmgraph.registry.records import ClashError
from ssmgraph.registry.specs import BlockSpec, Capabilities, ShapeError, TensorType


@dataclass
class TypedNode:
    node: GraphNode
    spec: BlockSpec
    args: dict[str, Any]
    in_types: list[TensorType]
    out_type: TensorType
    caps: Capabilities


def check_args(spec: BlockSpec, given: Mapping[str, Any], decl: NodeDecl, path: str, errors: Collector) -> dict[str, Any] | None:
    """Given args + defaults, each checked against the spec's schema (marks from ``decl``)."""
    ok = True
    args = dict(spec.defaults())
    for key, value in given.items():
        param = spec.param(key)
        mark = decl.marks.get(f"args.{key}") or decl.mark_of("args")
        if param is None:
            known = [p.name for p in spec.params]
            errors.add(
                "E202",
                f"block {spec.name!r} has no parameter {key!r}",
                mark,
                f"{path}.args.{key}",
                did_you_mean(key, known) if known else f"{spec.name} takes no parameters",
            )
            ok = False
            continue
        value, problem = param.check(value)
        if problem:
            errors.add("E203", f"{spec.name} parameter {key!r}: {problem}", mark, f"{path}.args.{key}", param.doc)
            ok = False
        args[key] = value
    for param in spec.params:
        if param.required and param.name not in given:
            errors.add(
                "E204",
                f"block {spec.name!r} needs parameter {param.name!r} ({param.doc})",
                decl.mark_of("args") if "args" in decl.marks else decl.mark,
                f"{path}.args",
                f"add args: {{{param.name}: ...}}",
            )
            ok = False
    return args if ok else None


def _ordered_inputs(node: GraphNode, spec: BlockSpec, errors: Collector) -> list[str] | None:
    """The node's input value ids in the spec's port order."""
    decl = node.decl
    if any(port for port, _ in node.inputs):
        by_port = {port: value for port, value in node.inputs}
        unknown = [p for p in by_port if p not in spec.inputs]
        missing = [p for p in spec.inputs if p not in by_port]
        if unknown or missing:
            errors.add(
                "E210",
                f"{spec.name} takes inputs ({', '.join(spec.inputs)}); "
                + "; ".join(
                    filter(
                        None,
                        [
                            f"unknown {', '.join(map(repr, unknown))}" if unknown else "",
                            f"missing {', '.join(map(repr, missing))}" if missing else "",
                        ],
                    )
                ),
                decl.mark_of("in"),
                f"{node.path}.in",
            )
            return None
        return [by_port[p] for p in spec.inputs]
    values = [value for _, value in node.inputs]
    if spec.variadic:
        if not values:
            errors.add("E111", f"{spec.name} needs at least one input", decl.mark, f"{node.path}.in")
            return None
        return values
    if len(values) != len(spec.inputs):
        errors.add(
            "E210",
            f"{spec.name} takes {len(spec.inputs)} input(s) ({', '.join(spec.inputs)}), got {len(values)}",
            decl.mark_of("in"),
            f"{node.path}.in",
            f"e.g. in: {{{', '.join(f'{p}: <node>' for p in spec.inputs)}}}" if len(spec.inputs) > 1 else "",
        )
        return None
    return values


def infer(blueprint: Blueprint, expanded: Expanded, registry: Registry, errors: Collector) -> dict[str, TypedNode]:
    """Resolve blocks and args (all errors of the phase), then propagate types in topological order."""
    checked: dict[str, tuple[BlockSpec, dict[str, Any], list[str]]] = {}
    for path, node in expanded.nodes.items():
        try:
            spec = registry.get(node.block)
        except ClashError as exc:  # two plugins provide the block: neither is used
            errors.add("E300", exc.clash.message, node.decl.mark_of("block"), f"{path}.block", exc.clash.remedy)
            continue
        if spec is None:
            if node.block or not node.broken:  # a broken share has no block; its error is reported
                errors.add(
                    "E201",
                    f"unknown block {node.block!r}",
                    node.decl.mark_of("block"),
                    f"{path}.block",
                    registry.suggest(node.block),
                )
            continue
        args = check_args(spec, node.args, node.decl, path, errors)
        inputs = None if node.broken else _ordered_inputs(node, spec, errors)
        if args is not None and inputs is not None:
            checked[path] = (spec, args, inputs)
    errors.raise_if_any()

    types: dict[str, TensorType] = {name: TensorType(decl.shape, decl.dtype) for name, decl in blueprint.inputs.items()}
    typed: dict[str, TypedNode] = {}
    for path in nx.topological_sort(expanded.graph):
        if path not in checked:
            continue
        spec, args, inputs = checked[path]
        if any(value not in types for value in inputs):
            continue  # an upstream node already failed
        in_types = [types[value] for value in inputs]
        node = expanded.nodes[path]
        try:
            out = spec.shape(in_types, **args)
        except ShapeError as exc:
            shown = ", ".join(f"{value}: {types[value]}" for value in inputs)
            message = str(exc) if str(exc).startswith(spec.name) else f"{spec.name}: {exc}"
            errors.add("E220", message, node.decl.mark_of("in") or node.mark, path, f"inputs are {shown}")
            continue
        except Exception as exc:  # noqa: BLE001 - a plugin's shape rule is not ours to trust
            errors.add(
                "E240", f"the shape rule of {spec.name} (from {spec.plugin}) failed: {type(exc).__name__}: {exc}", node.mark, path
            )
            continue
        types[path] = out
        typed[path] = TypedNode(node, spec, args, in_types, out, spec.capabilities(args))
    _check_shares(expanded, typed, errors)
    errors.raise_if_any()
    return typed


def _check_shares(expanded: Expanded, typed: dict[str, TypedNode], errors: Collector) -> None:
    for path, node in expanded.nodes.items():
        if node.share_of and path in typed and node.share_of in typed:
            mine, theirs = typed[path].in_types, typed[node.share_of].in_types

            def signature(types: list[TensorType]) -> list[tuple[str, object]]:
                return [(t.dtype, t.shape[-1] if t.dtype == "float" else None) for t in types]

            if signature(mine) != signature(theirs):
                errors.add(
                    "E230",
                    f"shares the module of {node.share_of!r}, which reads {', '.join(map(str, theirs))}, but this call site feeds {', '.join(map(str, mine))}",
                    node.decl.mark_of("share"),
                    f"{path}.share",
                )
