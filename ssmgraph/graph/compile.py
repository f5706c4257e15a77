"""Blueprint → :class:`CompiledModel`: expand, check, infer, instantiate, tie, generate code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import networkx as nx
import torch
from torch import nn

from ssmgraph.blueprint.document import Blueprint, NodeDecl
from ssmgraph.errors import Collector, Mark, did_you_mean
from ssmgraph.graph.block_checks import allocation, check_forwards, sizes, too_large
from ssmgraph.graph.codegen import generate
from ssmgraph.graph.expand import expand
from ssmgraph.graph.expanded import Expanded, GraphNode, TapInstance, follow_chain
from ssmgraph.graph.infer import TypedNode, check_args, infer
from ssmgraph.graph.model import CompiledModel, Container, NodeInfo
from ssmgraph.registry.plugins import Registry, get_registry
from ssmgraph.registry.specs import ShapeError, TensorType

TAPS_ROOT = "taps"


def compile_blueprint(blueprint: Blueprint, *, model: str | None = None, registry: Registry | None = None) -> CompiledModel:
    """Build the module a blueprint describes (``model=`` picks one view of a multi-model file)."""
    registry = registry or get_registry()
    errors = Collector()
    expanded = expand(blueprint, errors)
    typed = infer(blueprint, expanded, registry, errors)
    outputs, tap_instances = _select_view(blueprint, expanded, model, errors)
    ties = _resolve_ties(expanded, errors)
    errors.raise_if_any()

    needed = _ancestors(expanded.graph, list(outputs.values()) + [t.value for t in tap_instances.values()])
    tie_sources = {tie.owner.path for tie in ties if tie.node.path in needed}
    keep = [p for p in nx.topological_sort(expanded.graph) if p in typed and (p in needed or p in tie_sources)]

    root = _Root()
    modules: dict[str, nn.Module] = {}
    for path in keep:
        item = typed[path]
        module_path = item.node.module_path
        if module_path in modules:
            continue
        module = _instantiate(item, errors)
        if module is not None:
            modules[module_path] = module
            _install(root, module_path, module)
    errors.raise_if_any()
    check_forwards([typed[p] for p in keep], modules, errors)
    errors.raise_if_any()
    tied = _apply_ties([tie for tie in ties if tie.node.path in keep], modules, errors)
    input_types = {name: TensorType(decl.shape, decl.dtype) for name, decl in blueprint.inputs.items()}
    tap_modules = _tap_projections(tap_instances, input_types | {p: t.out_type for p, t in typed.items()}, registry, root, errors)
    errors.raise_if_any()

    input_names = list(blueprint.inputs)
    calls = [(p, typed[p].node.module_path, _input_order(typed[p])) for p in keep if p in needed]
    result: Any = next(iter(outputs.values())) if len(outputs) == 1 else dict(outputs)
    forward_fn, source = generate(blueprint.name, input_names, calls, result)
    taps_fn = None
    if tap_instances:
        tap_calls = list(calls)
        tap_values: dict[str, str] = {}
        for name, inst in tap_instances.items():
            if name in tap_modules:
                value = f"{TAPS_ROOT}.{name}"
                tap_calls.append((value, tap_modules[name], (inst.value,)))
                tap_values[name] = value
            else:
                tap_values[name] = inst.value
        taps_fn, _ = generate(blueprint.name + ":taps", input_names, tap_calls, (result, tap_values))

    infos = {
        p: NodeInfo(
            p,
            typed[p].spec.name,
            typed[p].node.module_path,
            tuple(_input_order(typed[p])),
            typed[p].out_type,
            typed[p].caps,
            typed[p].spec.plugin,
            dict(typed[p].args),
            tuple(typed[p].in_types),
        )
        for p in keep
    }
    compiled = CompiledModel(
        blueprint,
        view=model,
        input_types=input_types,
        outputs=outputs,
        taps={name: inst.value for name, inst in tap_instances.items()},
        nodes=infos,
        order=keep,
        tied=tied,
        forward_fn=forward_fn,
        taps_fn=taps_fn,
        source=source,
    )
    for name, child in root.named_children():
        compiled.add_module(name, child)
    return compiled


class _Root(Container):
    pass


def _input_order(item: TypedNode) -> list[str]:
    node, spec = item.node, item.spec
    if any(port for port, _ in node.inputs):
        by_port = dict(node.inputs)
        return [by_port[p] for p in spec.inputs]
    return [value for _, value in node.inputs]


def _ancestors(graph: nx.DiGraph, targets: list[str]) -> set[str]:
    """The targets and every node they depend on, in one backward walk over the graph.

    One walk shared by all targets keeps this linear in the graph's size; a walk per target
    (a model with a tap per layer) was quadratic."""
    found = set(targets)
    pending = list(found)
    while pending:
        for parent in graph.predecessors(pending.pop()):
            if parent not in found:
                found.add(parent)
                pending.append(parent)
    return found


def _select_view(
    blueprint: Blueprint, expanded: Expanded, model: str | None, errors: Collector
) -> tuple[dict[str, str], dict[str, TapInstance]]:
    if model is None:
        return dict(expanded.outputs), dict(expanded.taps)
    view = blueprint.models.get(model)
    if view is None:
        errors.add(
            "E210",
            f"blueprint {blueprint.name!r} has no model view {model!r}",
            None,
            "--model",
            did_you_mean(model, blueprint.models) if blueprint.models else "this blueprint defines no models: section",
        )
        return {}, {}
    outputs = {name: expanded.outputs[name] for name in view.outputs if name in expanded.outputs}
    taps = {name: inst for name, inst in expanded.taps.items() if any(name == t or name.startswith(t + ".") for t in view.taps)}
    return outputs, taps


def _instantiate(item: TypedNode, errors: Collector) -> nn.Module | None:
    try:
        module = item.spec.factory(item.in_types, **item.args)
    except ShapeError as exc:
        errors.add("E220", f"{item.spec.name}: {exc}", item.node.mark, item.node.path)
        return None
    except Exception as exc:  # noqa: BLE001 - a factory belongs to a plugin; report, don't crash
        if too_large(exc):
            errors.add(
                "E240",
                f"block {item.spec.name} is too large to build with {sizes(item)}: {allocation(exc)}",
                item.node.mark,
                item.node.path,
                "these sizes come from the blueprint's arguments (or a --set): make them smaller",
            )
        else:
            errors.add(
                "E240",
                f"block {item.spec.name} (from {item.spec.plugin}) failed to build: {type(exc).__name__}: {exc}",
                item.node.mark,
                item.node.path,
                "this is a bug in the block or an argument it does not support",
            )
        return None
    if not isinstance(module, nn.Module):
        errors.add(
            "E240",
            f"block {item.spec.name} (from {item.spec.plugin}) returned {type(module).__name__}, not an nn.Module",
            item.node.mark,
            item.node.path,
        )
        return None
    return module


def _install(root: nn.Module, path: str, module: nn.Module) -> None:
    *parents, leaf = path.split(".")
    holder = root
    for part in parents:
        child = holder._modules.get(part)
        if child is None:
            child = Container()
            holder.add_module(part, child)
        holder = child
    holder.add_module(leaf, module)


@dataclass(frozen=True)
class _Tie:
    """``node.attr`` becomes an alias of ``owner.owner_attr``, the tensor's final owner."""

    node: GraphNode
    attr: str
    owner: GraphNode
    owner_attr: str
    mark: Mark | None


_TieKey = tuple[str, str]  # (module path, parameter name): a share call site sees its module's ties


def _resolve_ties(expanded: Expanded, errors: Collector) -> list[_Tie]:
    """Every tie with its target followed to the parameter that is not itself tied.

    A ties to B and B to C makes A an alias of C, whatever order the nodes run in. A chain
    that comes back to itself is E230, reported once per cycle."""
    parameters: dict[_TieKey, tuple[GraphNode, str]] = {}  # a tie target's key -> (its node, its name)
    links: dict[_TieKey, _TieKey] = {}
    for node in expanded.nodes.values():
        for attr, target, target_attr, _ in node.ties:
            owner = expanded.nodes[target]
            parameters[(owner.module_path, target_attr)] = (owner, target_attr)
            links[(node.module_path, attr)] = (owner.module_path, target_attr)
    reported: set[frozenset[_TieKey]] = set()
    ties: list[_Tie] = []
    for node in expanded.nodes.values():
        for attr, _, _, mark in node.ties:
            end, loop = follow_chain((node.module_path, attr), links)
            if loop is None:
                ties.append(_Tie(node, attr, *parameters[end], mark))
            elif frozenset(loop) not in reported:
                reported.add(frozenset(loop))
                shown = " -> ".join(f"{m}.{a}" for m, a in (*loop, loop[0]))
                errors.add(
                    "E230",
                    f"ties form a cycle: {shown}",
                    mark,
                    f"{node.path}.tie.{attr}",
                    "one parameter of the cycle must own the tensor: remove its tie",
                )
    return ties


def _apply_ties(ties: list[_Tie], modules: dict[str, nn.Module], errors: Collector) -> dict[str, str]:
    """Alias parameters (``tie:``); returns {alias state-dict key: owning key}."""
    tied: dict[str, str] = {}
    for tie in ties:
        node, attr, owner_node, owner_attr = tie.node, tie.attr, tie.owner, tie.owner_attr
        where = f"{node.path}.tie.{attr}"
        module = modules.get(node.module_path)
        owner = modules.get(owner_node.module_path)
        if module is None or owner is None:
            continue
        source = _parameter(
            owner, owner_attr, f"{owner_node.path} ({owner_node.block}) has no parameter {owner_attr!r}", tie, errors
        )
        own = (
            _parameter(module, attr, f"{node.path} ({node.block}) has no parameter {attr!r} to tie", tie, errors)
            if source is not None
            else None
        )
        if source is None or own is None:
            continue
        if own.shape != source.shape:
            errors.add(
                "E230",
                f"cannot tie {node.path}.{attr} {tuple(own.shape)} to {owner_node.path}.{owner_attr} {tuple(source.shape)}: shapes differ",
                tie.mark,
                where,
                "tied parameters must have exactly the same shape",
            )
            continue
        *parents, leaf = attr.split(".")
        holder = module.get_submodule(".".join(parents)) if parents else module
        setattr(holder, leaf, source)
        tied[f"{node.module_path}.{attr}"] = f"{owner_node.module_path}.{owner_attr}"
    return tied


def _parameter(module: nn.Module, name: str, missing: str, tie: _Tie, errors: Collector) -> nn.Parameter | None:
    """``module``'s parameter ``name``, or None with E230 (``missing``) and the names it has."""
    try:
        return module.get_parameter(name)
    except AttributeError:
        names = [n for n, _ in module.named_parameters()]
        errors.add("E230", missing, tie.mark, f"{tie.node.path}.tie.{tie.attr}", did_you_mean(name, names))
        return None


def _tap_projections(
    taps: dict[str, TapInstance], value_types: dict[str, TensorType], registry: Registry, root: nn.Module, errors: Collector
) -> dict[str, str]:
    """Learnable projections of taps into a common space; returns {tap name: module path}.

    ``value_types`` holds the type of every input and node a tap may read."""
    paths: dict[str, str] = {}
    for name, inst in taps.items():
        if inst.project_block is None:
            continue
        spec = registry.get(inst.project_block)
        where = f"taps.{name.split('.')[0]}.project"
        if spec is None:
            errors.add("E201", f"unknown block {inst.project_block!r}", inst.mark, where, registry.suggest(inst.project_block))
            continue
        args = check_args(spec, inst.project_args, NodeDecl(name=inst.name, mark=inst.mark), f"{where}.args", errors)
        if args is None:
            continue
        in_types = [value_types[inst.value]]
        try:
            spec.shape(in_types, **args)
            module = spec.factory(in_types, **args)
        except ShapeError as exc:
            errors.add("E220", f"{spec.name}: {exc}", inst.mark, where)
            continue
        module_path = f"{TAPS_ROOT}.{name}"
        _install(root, module_path, module)
        paths[name] = module_path
    return paths


def count_parameters(module: nn.Module) -> int:
    """Parameters counted once each, however often they are tied or shared."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def example_inputs(
    model: CompiledModel, *, batch: int = 2, seq: int = 16, vocab: int | None = None, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Random inputs that fit the model's declared inputs."""
    sizes = {"batch": batch, "seq": seq}
    out = []
    for name, ttype in model.input_types.items():
        shape = tuple(sizes.get(d, seq) if isinstance(d, str) else d for d in ttype.shape)
        if ttype.dtype == "int":
            high = vocab or _vocab_for(model, name)
            out.append(torch.randint(0, high, shape, generator=generator))
        else:
            out.append(torch.randn(shape, generator=generator))
    return out


def _vocab_for(model: CompiledModel, input_name: str) -> int:
    """The smallest vocabulary among embeddings reading ``input_name`` (so ids are valid)."""
    sizes = []
    for info in model.nodes.values():
        if input_name in info.inputs:
            module = model.get_submodule(info.module_path)
            if isinstance(getattr(module, "num_embeddings", None), int):
                sizes.append(module.num_embeddings)
    return min(sizes) if sizes else 2
