"""Every permutation space of a compiled model: its blocks' internal spaces, and the graph
spaces (the residual stream above all) that its blocks' feature declarations join into.

Along the graph's edges the declarations of :func:`~ssmgraph.graph.perm_spaces.block_io`
join into spaces (union-find over the values); a space is *fixed* — never permuted — when a
block that declares nothing for that port reads or writes it (a sinusoidal position table, a
concat, a vocabulary), when it is a graph input or a model output, or when a tied tensor is
read along it by a module that does not declare that axis. Keyed ``"residual:<value>"`` after
the first value (in graph order) that carries it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from ssmgraph.errors import SsmgraphError
from ssmgraph.graph.model import CompiledModel
from ssmgraph.graph.perm_spaces import GraphSpace, PermSpaceError, Space, block_io, block_spaces, feature_width, misfit
from ssmgraph.registry.plugins import Registry, get_registry
from ssmgraph.registry.specs import BlockSpec, PermAxis, PermSpace, TensorType

RESIDUAL_PREFIX = "residual:"


def model_spaces(model: CompiledModel, registry: Registry | None = None, *, residual: bool = True) -> list[Space]:
    """Every space of a compiled model: the internal spaces of its blocks in graph order (once
    per module), then (``residual``) the graph spaces its blocks' input/output declarations
    join into, the residual stream above all.

    Internal spaces touching a tied parameter are left out: another module reads the same
    tensor, and the permutation would change what it computes."""
    registry = registry or get_registry()
    tied = set(model.tied) | set(model.tied.values())
    seen: set[str] = set()
    spaces: list[Space] = []
    for path in model.order:
        info = model.nodes[path]
        if info.module_path in seen:
            continue
        seen.add(info.module_path)
        module = model.get_submodule(info.module_path)
        for bound in block_spaces(_spec(registry, info.block, path), info.in_types, info.args, module, info.module_path):
            if not any(bound.param_key(axis) in tied for axis in bound.space.axes):
                spaces.append(bound)
    if residual:
        spaces.extend(graph_spaces(model, registry, internal=spaces))
    return spaces


def _spec(registry: Registry, block: str, path: str) -> BlockSpec:
    spec = registry.get(block)
    if spec is None:
        raise SsmgraphError(f"{path}: block {block!r} is not in the registry the model is inspected with")
    return spec


class _Values:
    """Union-find over the values of a graph, with the fixed ones marked (a space is fixed when
    any of its values is)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.fixed: set[str] = set()

    def find(self, v: str) -> str:
        self.parent.setdefault(v, v)
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def fix(self, v: str) -> None:
        self.fixed.add(v)


def graph_spaces(model: CompiledModel, registry: Registry | None = None, *, internal: Sequence[Space] = ()) -> list[GraphSpace]:
    """The free feature spaces of a compiled model's values (see the module doc), checked not
    to overlap any of ``internal`` on the same axis of a tensor."""
    registry = registry or get_registry()
    tied = dict(model.tied)

    def owner(name: str) -> str:
        hops = 0
        while name in tied and hops <= len(tied):
            name, hops = tied[name], hops + 1
        return name

    widths: dict[str, int | None] = dict.fromkeys(model.input_types)
    widths.update((path, feature_width(model.nodes[path].out_type)) for path in model.order)
    order = {v: i for i, v in enumerate([*model.input_types, *model.order])}

    values = _Values()
    for name in model.input_types:
        values.fix(name)
    for value in model.outputs.values():
        values.fix(value)
    attached: list[tuple[str, PermAxis]] = []  # (value, axis on the owner tensor)
    declared: dict[tuple[str, int], set[str]] = {}  # (owner tensor, axis) -> module paths declaring it

    def attach(value: str, space: PermSpace, module_path: str) -> None:
        for axis in space.axes:
            name = owner(f"{module_path}.{axis.param}")
            bound = PermAxis(name, axis.axis, axis.group, axis.chunks, axis.start)
            attached.append((value, bound))
            declared.setdefault((name, axis.axis), set()).add(module_path)

    calls: list[tuple[str, str, BlockSpec, tuple[TensorType, ...], dict[str, Any], tuple[str, ...], TensorType | None, bool]] = []
    for path in model.order:
        info = model.nodes[path]
        calls.append(
            (
                path,
                info.module_path,
                _spec(registry, info.block, path),
                info.in_types,
                info.args,
                info.inputs,
                info.out_type,
                False,
            )
        )
    for name, value in model.tap_sources.items():
        module_path = f"taps.{name}"
        try:
            model.get_submodule(module_path)
        except AttributeError:
            continue  # an unprojected tap: the value itself, read outside the model
        decl = _tap_decl(model, name)
        spec = registry.get(decl.project_block) if decl is not None and decl.project_block else None
        in_type = model.nodes[value].out_type if value in model.nodes else model.input_types.get(value)
        if spec is None or in_type is None:
            values.fix(value)
            continue
        calls.append((module_path, module_path, spec, (in_type,), {**spec.defaults(), **decl.project_args}, (value,), None, True))

    for path, module_path, spec, in_types, args, inputs, out_type, is_tap in calls:
        io = block_io(spec, in_types, args, model.get_submodule(module_path), module_path, out_type)
        for value in inputs:
            widths.setdefault(value, None)  # a value of a node that is not kept: fixed below
            if value not in order:
                values.fix(value)
        if is_tap:  # a projected tap's output is read outside the model: its space is fixed
            if 0 in io.inputs:
                attach(inputs[0], io.inputs[0], module_path)
            else:
                values.fix(inputs[0])
            continue
        if io.through is not None:
            for value in inputs:
                values.union(value, path)
            attach(path, io.through, module_path)
            continue
        for i, value in enumerate(inputs):
            if i in io.inputs:
                attach(value, io.inputs[i], module_path)
            else:
                values.fix(value)
        if io.output is not None:
            attach(path, io.output, module_path)
        else:
            values.fix(path)

    # One tensor axis lies in one space: declarations of the same axis join their spaces.
    first: dict[PermAxis, str] = {}
    for value, axis in attached:
        if axis in first:
            values.union(first[axis], value)
        else:
            first[axis] = value
    # A tied tensor read along an axis by a module that does not declare that axis pins it.
    members: dict[str, set[str]] = {}
    module_paths = sorted({c[1] for c in calls}, key=len, reverse=True)
    for alias, target in tied.items():
        name = owner(target)
        for key in (alias, target):
            holder = next((m for m in module_paths if key.startswith(m + ".")), None)
            if holder is not None:
                members.setdefault(name, set()).add(holder)
    for value, axis in attached:
        readers = members.get(axis.param)
        if readers and not readers <= declared.get((axis.param, axis.axis), set()):
            values.fix(value)

    def rank(value: str) -> int:  # graph order, values of dropped nodes last
        return order.get(value, len(order))

    fixed_roots = {values.find(v) for v in values.fixed}
    group_axes: dict[str, list[PermAxis]] = {}  # root -> the axes attached to its values
    for value, axis in attached:
        axes = group_axes.setdefault(values.find(value), [])
        if axis not in axes:
            axes.append(axis)
    groups: dict[str, list[str]] = {}  # root -> its values in graph order (find registered them all)
    for value in sorted(values.parent, key=rank):
        groups.setdefault(values.find(value), []).append(value)
    spaces = []
    for root, axes in sorted(group_axes.items(), key=lambda kv: rank(groups[kv[0]][0])):
        if root in fixed_roots:
            continue
        sizes = {widths.get(v) for v in groups[root]}
        if None in sizes or len(sizes) != 1:
            continue  # a value without a feature width (or of two widths) cannot be permuted
        size = sizes.pop()
        if size < 2:
            continue
        params = {a.param for a in axes}
        ties = tuple((alias, target) for alias, target in tied.items() if owner(target) in params)
        spaces.append(GraphSpace(RESIDUAL_PREFIX + groups[root][0], size, tuple(axes), tuple(groups[root]), ties))
    _check_disjoint(spaces, internal, model.state_dict())
    return spaces


def _tap_decl(model: CompiledModel, instance: str) -> Any:
    taps = getattr(model.blueprint, "taps", {}) or {}
    names = [n for n in taps if instance == n or instance.startswith(n + ".")]
    return taps[max(names, key=len)] if names else None


def _span(axis: PermAxis, size: int) -> tuple[int, int]:
    return axis.start, axis.start + axis.chunks * size * axis.group


def _check_disjoint(graph: Sequence[GraphSpace], internal: Sequence[Space], state: Mapping[str, Tensor]) -> None:
    """No graph-space axis may overlap another space's axis (or another of its own) on one tensor axis."""
    spans: dict[tuple[str, int], list[tuple[str, PermAxis, tuple[int, int]]]] = {}
    for space in [*internal, *graph]:
        for name, axis in space.bound_axes():
            spans.setdefault((name, axis.axis), []).append((space.key, axis, _span(axis, space.size)))
    for space in graph:
        for name, axis in space.bound_axes():
            lo, hi = _span(axis, space.size)
            problem = misfit(state, name, axis, space.size, None)
            if problem:
                raise PermSpaceError(f"space {space.key}: {problem}")
            for key, other, (olo, ohi) in spans[(name, axis.axis)]:
                if (key, other) != (space.key, axis) and lo < ohi and olo < hi:
                    raise PermSpaceError(
                        f"{name!r} axis {axis.axis}: entries {lo}..{hi - 1} lie in space {space.key} and entries {olo}..{ohi - 1} "
                        f"in space {key}; a block declares one tensor axis in two spaces"
                    )
