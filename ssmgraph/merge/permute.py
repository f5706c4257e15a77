"""Permutation symmetries of models: find them, apply them, align one model onto another.

Two kinds of spaces:

* **Internal spaces**, declared by block specs (:class:`~ssmgraph.registry.specs.PermSpace`):
  units inside one block (MLP hidden units, attention heads, LSTM cells, Mamba channels, SSM
  modes) whose order the block's output does not depend on. Permuting one changes nothing
  outside its block. Keyed ``"<module path>/<space name>"`` (:class:`BoundSpace`).
* **Graph spaces** (:class:`GraphSpace`): the feature dimension of the values that flow
  between blocks — above all the residual stream (d_model), which every embedding, norm,
  mixer and head of a model reads and writes. A block says how it treats the features of its
  inputs and output with the reserved space names ``"<input>"`` / ``"<input:PORT>"`` (the
  axes that read an input's features), ``"<output>"`` (the axes that write the output's) and
  ``"<through>"`` (input and output share one space: norms, residual adds). Along the
  graph's edges these declarations join into spaces (union-find over the values); a space
  is *fixed* — never permuted — when a block that declares nothing for that port reads or
  writes it (a sinusoidal position table, a concat, a vocabulary), when it is a graph input
  or a model output, or when a tied tensor is read along it by a module that does not
  declare that axis. Keyed ``"residual:<value>"`` after the first value (in graph order)
  that carries it.

A permutation of a space is an index tensor ``p`` over its units: unit i afterwards is unit
``p[i]`` before (``x[p]``).

Weight matching (Ainsworth, Hayase, Srinivasa 2023, "Git Re-Basin", §3.2) maximises
Σ ⟨θ_A, π(θ_B)⟩ over the permutations of every space. Spaces can share a tensor (Mamba's
x_proj has the channels on its columns and the state entries on its rows; every projection
has a residual axis and an internal one), so as in Git Re-Basin each space in turn is one
linear assignment with everything else held fixed, visited in a seeded random order until a
sweep changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ssmgraph.errors import SsmgraphError
from ssmgraph.graph.model import CompiledModel
from ssmgraph.registry.plugins import Registry, get_registry
from ssmgraph.registry.specs import INPUT_SPACE, OUTPUT_SPACE, THROUGH_SPACE, BlockSpec, PermAxis, PermSpace, TensorType

StateDict = dict[str, Tensor]
RESIDUAL_PREFIX = "residual:"


class PermSpaceError(SsmgraphError, ValueError):
    """A block declares a permutation space that does not fit its own parameters."""

    code = "E300"


@dataclass(frozen=True)
class BoundSpace:
    """A block's declared space, placed in a model at the block's module path."""

    module: str
    block: str
    space: PermSpace

    @property
    def key(self) -> str:
        return f"{self.module}/{self.space.name}" if self.module else self.space.name

    @property
    def size(self) -> int:
        return self.space.size

    @property
    def ties(self) -> tuple[tuple[str, str], ...]:
        return ()

    def param_key(self, axis: PermAxis) -> str:
        """The state-dict name of the parameter ``axis`` lies in."""
        return f"{self.module}.{axis.param}" if self.module else axis.param

    def bound_axes(self) -> list[tuple[str, PermAxis]]:
        """(state-dict name, axis) of every axis of the space."""
        return [(self.param_key(axis), axis) for axis in self.space.axes]


@dataclass(frozen=True)
class GraphSpace:
    """A feature space shared by several values of a model's graph (the residual stream),
    with the axes of every module that reads or writes it. ``axes`` name full state-dict
    entries (tied tensors by their owner's name); ``ties`` lists (alias, owner) of the tied
    tensors among them, so a permuted owner is copied to its aliases."""

    name: str
    size: int
    axes: tuple[PermAxis, ...]
    values: tuple[str, ...]
    ties: tuple[tuple[str, str], ...] = ()
    doc: str = "the feature dimension of these graph values"

    @property
    def key(self) -> str:
        return self.name

    @property
    def module(self) -> None:
        """None: the space spans modules (its axes name full state-dict entries)."""
        return None

    @property
    def block(self) -> str:
        return ""

    def param_key(self, axis: PermAxis) -> str:
        return axis.param

    def bound_axes(self) -> list[tuple[str, PermAxis]]:
        return [(axis.param, axis) for axis in self.axes]


Space = BoundSpace | GraphSpace


@dataclass(frozen=True)
class BlockIO:
    """A configured block's declarations of its input and output features (reserved names),
    axes relative to its module. ``inputs``: port index → declaration."""

    inputs: Mapping[int, PermSpace] = field(default_factory=dict)
    output: PermSpace | None = None
    through: PermSpace | None = None

    @property
    def declared(self) -> bool:
        return bool(self.inputs) or self.output is not None or self.through is not None


def is_io_space(space: PermSpace) -> bool:
    """Whether ``space`` uses a reserved name (``<input>``, ``<output>``, ``<through>``)."""
    return space.name.startswith("<")


def _feature_width(t: TensorType) -> int | None:
    """The size of a float value's feature (last) dimension; None for ids or a symbolic width."""
    last = t.shape[-1] if t.shape else None
    return last if t.dtype == "float" and isinstance(last, int) else None


def _declared(spec: BlockSpec, in_types: Sequence[TensorType], args: Mapping[str, Any]) -> list[PermSpace]:
    return [] if spec.perm_spaces is None else list(spec.perm_spaces(list(in_types), **args))


def _where(spec: BlockSpec, prefix: str) -> str:
    at = f" at {prefix}" if prefix else ""
    return f"block {spec.name}{at} (plugin {spec.plugin or 'unregistered'})"


def _check_axes(spec: BlockSpec, space: PermSpace, state: Mapping[str, Tensor], prefix: str) -> None:
    for axis in space.axes:
        problem = _misfit(state, axis.param, axis, space.size, "")
        if problem:
            raise PermSpaceError(f"{_where(spec, prefix)} declares permutation space {space.name!r} on {axis.param!r} axis {axis.axis}, but {problem}")


def block_spaces(
    spec: BlockSpec, in_types: Sequence[TensorType], args: Mapping[str, Any], module: nn.Module, prefix: str = ""
) -> list[BoundSpace]:
    """The internal spaces ``spec`` declares for one configured block with two units or more,
    checked against the parameters of ``module`` (its instance, at ``prefix`` in the model).
    Declarations of input/output features (reserved names) are :func:`block_io`'s."""
    state = module.state_dict()
    spaces = []
    for space in _declared(spec, in_types, args):
        if is_io_space(space):
            continue
        _check_axes(spec, space, state, prefix)
        if space.size > 1:
            spaces.append(BoundSpace(prefix, spec.name, space))
    return spaces


def block_io(
    spec: BlockSpec,
    in_types: Sequence[TensorType],
    args: Mapping[str, Any],
    module: nn.Module,
    prefix: str = "",
    out_type: TensorType | None = None,
) -> BlockIO:
    """How one configured block treats the features of its inputs and output: the reserved
    spaces it declares, checked against its parameters and against the feature widths."""
    inputs: dict[int, PermSpace] = {}
    output = through = None
    state = module.state_dict()
    ports = list(range(len(in_types)))

    def fits(space: PermSpace, types: Iterable[TensorType], what: str) -> None:
        for t in types:
            if _feature_width(t) != space.size:
                raise PermSpaceError(f"{_where(spec, prefix)} declares {space.name!r} of size {space.size}, but its {what} is {t}")

    for space in _declared(spec, in_types, args):
        if not is_io_space(space):
            continue
        _check_axes(spec, space, state, prefix)
        name = space.name
        if name == THROUGH_SPACE:
            if through is not None:
                raise PermSpaceError(f"{_where(spec, prefix)} declares {name!r} twice")
            fits(space, in_types, "input")
            if out_type is not None:
                fits(space, [out_type], "output")
            through = space
        elif name == OUTPUT_SPACE:
            if output is not None:
                raise PermSpaceError(f"{_where(spec, prefix)} declares {name!r} twice")
            if out_type is not None:
                fits(space, [out_type], "output")
            output = space
        elif name == INPUT_SPACE or (name.startswith("<input:") and name.endswith(">")):
            if name == INPUT_SPACE:
                if len(spec.inputs) > 1 and not spec.variadic:
                    raise PermSpaceError(f"{_where(spec, prefix)} has ports {', '.join(spec.inputs)}: name one, '<input:{spec.inputs[0]}>', not {name!r}")
                chosen = ports
            else:
                port = name[len("<input:") : -1]
                if port not in spec.inputs or spec.variadic:
                    raise PermSpaceError(f"{_where(spec, prefix)} declares {name!r}, but its ports are {', '.join(spec.inputs)}")
                chosen = [spec.inputs.index(port)]
            for i in chosen:
                if i in inputs:
                    raise PermSpaceError(f"{_where(spec, prefix)} declares the features of input {i} twice")
                fits(space, [in_types[i]], f"input {i}")
                inputs[i] = space
        else:
            raise PermSpaceError(
                f"{_where(spec, prefix)} declares a space named {name!r}: names in <> are reserved for "
                "'<input>', '<input:PORT>', '<output>' and '<through>'"
            )
    if through is not None and (inputs or output is not None):
        raise PermSpaceError(f"{_where(spec, prefix)} declares '<through>' together with '<input>' or '<output>': use one or the other")
    return BlockIO(inputs, output, through)


def io_bound_spaces(block: str, io: BlockIO, ports: int, prefix: str = "") -> tuple[list[BoundSpace], dict[int, str], str | None]:
    """One block's feature declarations as spaces of their own (keyed by their reserved names),
    with the key that permutes each declared input port and the output (None: fixed). Permuting
    them together with those inputs' and the output's last dimension leaves the block's
    function unchanged (the conformance kit's check)."""
    spaces: dict[str, BoundSpace] = {}
    inputs: dict[int, str] = {}
    output = None
    if io.through is not None:
        spaces[io.through.name] = BoundSpace(prefix, block, io.through)
        inputs = {port: io.through.name for port in range(ports)}
        output = io.through.name
    for port, space in io.inputs.items():
        spaces.setdefault(space.name, BoundSpace(prefix, block, space))
        inputs[port] = space.name
    if io.output is not None:
        spaces[io.output.name] = BoundSpace(prefix, block, io.output)
        output = io.output.name
    return list(spaces.values()), inputs, output


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
    widths.update((path, _feature_width(model.nodes[path].out_type)) for path in model.order)
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
        calls.append((path, info.module_path, _spec(registry, info.block, path), info.in_types, info.args, info.inputs, info.out_type, False))
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
            problem = _misfit(state, name, axis, space.size, None)
            if problem:
                raise PermSpaceError(f"space {space.key}: {problem}")
            for key, other, (olo, ohi) in spans[(name, axis.axis)]:
                if (key, other) != (space.key, axis) and lo < ohi and olo < hi:
                    raise PermSpaceError(
                        f"{name!r} axis {axis.axis}: entries {lo}..{hi - 1} lie in space {space.key} and entries {olo}..{ohi - 1} "
                        f"in space {key}; a block declares one tensor axis in two spaces"
                    )


def random_permutations(spaces: Sequence[Space], generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """A uniformly random permutation of every space."""
    return {s.key: torch.randperm(s.size, generator=generator) for s in spaces}


def permute_state(state: Mapping[str, Tensor], spaces: Sequence[Space], perms: Mapping[str, Tensor]) -> StateDict:
    """``state`` with each space in ``perms`` permuted on all its axes (other tensors shared,
    not copied); a permuted tied tensor is copied to its aliases present in ``state``."""
    by_key = {s.key: s for s in spaces}
    unknown = sorted(set(perms) - set(by_key))
    if unknown:
        raise ValueError(f"no permutation space {unknown[0]!r} among {', '.join(by_key) or 'none'}")
    out = dict(state)
    ties: dict[str, str] = {}
    for key, perm in perms.items():
        space = by_key[key]
        _check_perm(space, perm)
        for name, axis in space.bound_axes():
            problem = _misfit(out, name, axis, space.size, space.module)
            if problem:
                raise ValueError(f"cannot permute {key}: {problem}")
            out[name] = _permuted(out[name], axis, space.size, perm)
        ties.update(space.ties)
    for alias, target in ties.items():
        if alias in out and target in out:
            out[alias] = out[target]
    return out


def weight_matching(
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    spaces: Sequence[Space],
    *,
    iters: int = 100,
    seed: int = 0,
    fixed: Mapping[str, Tensor] | None = None,
) -> tuple[dict[str, Tensor], StateDict]:
    """Align ``b`` onto ``a``: the permutations ``p`` of ``b``'s spaces that maximise the summed
    inner product of the two models' weights, and ``permute_state(b, spaces, p)``.

    At most ``iters`` sweeps (it stops at the first sweep that changes nothing); ``seed``
    fixes the order spaces are visited in. ``fixed`` (space key → permutation) holds some
    spaces at permutations found otherwise (e.g. :func:`activation_matching`)."""
    for space in spaces:
        for name, axis in space.bound_axes():
            for label, state in (("a", a), ("b", b)):
                problem = _misfit(state, name, axis, space.size, space.module)
                if problem:
                    raise ValueError(f"cannot match {space.key} in model {label}: {problem}")
            if a[name].shape != b[name].shape:
                raise ValueError(f"{name}: shape {tuple(a[name].shape)} in model a but {tuple(b[name].shape)} in model b")
    touching: dict[str, list[tuple[Space, PermAxis]]] = {}
    for space in spaces:
        for name, axis in space.bound_axes():
            touching.setdefault(name, []).append((space, axis))
    fixed = dict(fixed or {})
    perms = {s.key: fixed.get(s.key, torch.arange(s.size)) for s in spaces}
    generator = torch.Generator().manual_seed(seed)
    for _ in range(iters):
        changed = False
        for i in torch.randperm(len(spaces), generator=generator).tolist():
            space = spaces[i]
            if space.key in fixed:
                continue
            sim = _similarity(a, b, space, touching, perms)
            _, cols = linear_sum_assignment(sim.numpy(), maximize=True)
            new, units = torch.as_tensor(cols, dtype=torch.long), torch.arange(space.size)
            old_score, new_score = sim[units, perms[space.key]].sum().item(), sim[units, new].sum().item()
            if new_score > old_score + 1e-12 * (1 + abs(old_score)):  # only a strict gain: ties never flip
                perms[space.key], changed = new, True
        if not changed:
            break
    return perms, permute_state(b, spaces, perms)


def activation_matching(
    model_a: CompiledModel, model_b: CompiledModel, spaces: Sequence[Space], batches: Iterable[Sequence[Tensor]]
) -> dict[str, Tensor]:
    """Permutations of ``model_b``'s spaces that best correlate its units with ``model_a``'s on
    the same inputs (Ainsworth et al. 2023, activation matching): per space, the correlation
    of every pair of units, summed over what carries them, then one linear assignment.

    A graph space's units are the features of the values that carry it (the residual stream);
    a block's internal space is matched where one of its axes is the output rows of an
    ``nn.Linear`` (an FFN's hidden units, attention heads, Mamba's channels): that layer's
    outputs. Other spaces are left out of the result: give it to :func:`weight_matching` as
    ``fixed`` to solve them from the weights."""
    probes = [p for p in (_probe(model_a, s) for s in spaces) if p is not None]
    sums = {key: torch.zeros(size, size, dtype=torch.float64) for key, size, _, _ in probes}
    for inputs in batches:
        outs = [_module_outputs(m, {path for _, _, paths, _ in probes for path in paths}, inputs) for m in (model_a, model_b)]
        for key, size, paths, axis in probes:
            for path in paths:
                ua, ub = (_standardised(_units(out[path].reshape(-1, out[path].shape[-1]).T, axis, size)) for out in outs)
                sums[key] += ua @ ub.T
    perms = {}
    for key, corr in sums.items():
        _, cols = linear_sum_assignment(corr.numpy(), maximize=True)
        perms[key] = torch.as_tensor(cols, dtype=torch.long)
    return perms


def _probe(model: CompiledModel, space: Space) -> tuple[str, int, tuple[str, ...], PermAxis] | None:
    """(key, size, module paths whose outputs carry the units, axis of the units in the
    outputs' last dimension), or None when no module output shows the space's units."""
    if isinstance(space, GraphSpace):
        return space.key, space.size, tuple(dict.fromkeys(model.nodes[v].module_path for v in space.values)), PermAxis("", 0)
    for name, axis in space.bound_axes():
        owner, _, leaf = name.rpartition(".")
        if leaf == "weight" and axis.axis == 0 and isinstance(model.get_submodule(owner), nn.Linear):
            return space.key, space.size, (owner,), axis
    return None


def _standardised(units: Tensor) -> Tensor:
    """Rows centred and scaled to unit norm, so that their inner products are correlations."""
    units = units - units.mean(dim=1, keepdim=True)
    return units / (units.norm(dim=1, keepdim=True) + 1e-12)


def _module_outputs(model: CompiledModel, paths: set[str], inputs: Sequence[Tensor]) -> dict[str, Tensor]:
    """The outputs of the sub-modules at ``paths`` on ``inputs`` (the first call of each)."""
    found: dict[str, Tensor] = {}
    hooks = [
        model.get_submodule(path).register_forward_hook(lambda _m, _i, out, path=path: found.setdefault(path, out.detach()))
        for path in paths
    ]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return found


def _similarity(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor], space: Space, touching: Mapping[str, list[tuple[Space, PermAxis]]], perms: Mapping[str, Tensor]
) -> Tensor:
    """sim[i, j] = ⟨unit i of a, unit j of b⟩ summed over the space's axes, with b permuted on
    every other (space, axis) of the same tensor at its current permutation."""
    sim = torch.zeros(space.size, space.size, dtype=torch.float64)
    for name, axis in space.bound_axes():
        wb = b[name]
        for other, other_axis in touching[name]:
            if (other.key, other_axis) != (space.key, axis):
                wb = _permuted(wb, other_axis, other.size, perms[other.key])
        sim += _units(a[name], axis, space.size) @ _units(wb, axis, space.size).T
    return sim


def _units(t: Tensor, axis: PermAxis, size: int) -> Tensor:
    """(size, rest): the units of ``t`` along ``axis``, each flattened with its chunks and group."""
    dim = axis.axis
    seg = t.detach().narrow(dim, axis.start, axis.chunks * size * axis.group)
    split = seg.reshape(*seg.shape[:dim], axis.chunks, size, axis.group, *seg.shape[dim + 1 :])
    return split.movedim(dim + 1, 0).reshape(size, -1).to(torch.float64).cpu()


def _permuted(t: Tensor, axis: PermAxis, size: int, perm: Tensor) -> Tensor:
    """``t`` with the units on ``axis`` reordered: unit i of every chunk becomes unit perm[i]."""
    length = t.shape[axis.axis]
    units = (torch.arange(axis.chunks)[:, None, None] * size + perm.cpu()[None, :, None]) * axis.group + torch.arange(axis.group)
    index = torch.arange(length)
    index[axis.start : axis.start + units.numel()] = axis.start + units.flatten()
    return t.index_select(axis.axis, index.to(t.device))


def _misfit(state: Mapping[str, Tensor], name: str, axis: PermAxis, size: int, module: str | None) -> str | None:
    """Why ``size`` units cannot lie where ``axis`` says in ``state[name]`` (None when they can);
    a missing name is reported with the parameters of ``module`` ("" the whole state, None
    the name's parent)."""
    t = state.get(name)
    if t is None:
        if module is None:
            module = name.rsplit(".", 1)[0] if "." in name else ""
        inside = module + "." if module else ""
        params = [k[len(inside) :] for k in state if k.startswith(inside)]
        holder = inside[:-1] or "the module"
        return f"there is no parameter {name!r} ({holder} has {', '.join(params) or 'none'})"
    if not 0 <= axis.axis < t.dim():
        return f"{name!r} of shape {tuple(t.shape)} has no axis {axis.axis}"
    if axis.group < 1 or axis.chunks < 1 or axis.start < 0:
        return f"group {axis.group}, chunks {axis.chunks} and start {axis.start} must be positive (start: at least 0)"
    end = axis.start + axis.chunks * size * axis.group
    if end > t.shape[axis.axis]:
        return (
            f"{axis.chunks} chunk(s) of {size} units of {axis.group} from index {axis.start} end at {end}, "
            f"past the length {t.shape[axis.axis]} of axis {axis.axis} of {name!r} {tuple(t.shape)}"
        )
    return None


def _check_perm(space: Space, perm: Tensor) -> None:
    if perm.dtype not in (torch.int64, torch.int32) or perm.shape != (space.size,) or not torch.equal(perm.sort().values.cpu(), torch.arange(space.size, dtype=perm.dtype)):
        raise ValueError(
            f"the permutation of {space.key} must be an integer tensor holding 0..{space.size - 1} once each, "
            f"got {perm.dtype} of shape {tuple(perm.shape)}: {perm.flatten()[:8].tolist()}{' ...' if perm.numel() > 8 else ''}"
        )
