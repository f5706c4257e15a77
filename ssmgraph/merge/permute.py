"""Permutation symmetries of models: find them, apply them, align one model onto another.

Block specs declare *internal* permutation spaces (:class:`~ssmgraph.registry.specs.PermSpace`):
units inside one block (MLP hidden units, attention heads, LSTM cells, Mamba channels, SSM
modes) whose order the block's output does not depend on. The residual stream (d_model) is
deliberately not declared: every embedding, norm, mixer, head and tie of a model reads and
writes it, so its permutation is a property of the whole graph, not of a block, while the
internal spaces already hold most of a model's width. Internal spaces keep alignment local:
permuting one changes nothing outside its block.

A permutation of a space is an index tensor ``p`` over its units: unit i afterwards is unit
``p[i]`` before (``x[p]``). Spaces are keyed ``"<module path>/<space name>"``.

Weight matching (Ainsworth, Hayase, Srinivasa 2023, "Git Re-Basin", §3.2) maximises
Σ ⟨θ_A, π(θ_B)⟩ over the permutations of every space. Spaces of one block can share a tensor
(Mamba's x_proj has the channels on its columns and the state entries on its rows), so as in
Git Re-Basin each space in turn is one linear assignment with everything else held fixed,
visited in a seeded random order until a sweep changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ssmgraph.errors import SsmgraphError
from ssmgraph.graph.model import CompiledModel
from ssmgraph.registry.plugins import Registry, get_registry
from ssmgraph.registry.specs import BlockSpec, PermAxis, PermSpace, TensorType

StateDict = dict[str, Tensor]


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

    def param_key(self, axis: PermAxis) -> str:
        """The state-dict name of the parameter ``axis`` lies in."""
        return f"{self.module}.{axis.param}" if self.module else axis.param


def block_spaces(
    spec: BlockSpec, in_types: Sequence[TensorType], args: Mapping[str, Any], module: nn.Module, prefix: str = ""
) -> list[BoundSpace]:
    """The spaces ``spec`` declares for one configured block with two units or more, checked
    against the parameters of ``module`` (its instance, at ``prefix`` in the model)."""
    if spec.perm_spaces is None:
        return []
    state = module.state_dict()
    spaces = []
    for space in spec.perm_spaces(list(in_types), **args):
        for axis in space.axes:
            problem = _misfit(state, BoundSpace("", spec.name, space), axis)
            if problem:
                where = f" at {prefix}" if prefix else ""
                raise PermSpaceError(
                    f"block {spec.name}{where} (plugin {spec.plugin or 'unregistered'}) declares permutation space "
                    f"{space.name!r} on {axis.param!r} axis {axis.axis}, but {problem}"
                )
        if space.size > 1:
            spaces.append(BoundSpace(prefix, spec.name, space))
    return spaces


def model_spaces(model: CompiledModel, registry: Registry | None = None) -> list[BoundSpace]:
    """Every declared space of a compiled model's blocks, in graph order, once per module.

    Spaces touching a tied parameter are left out: another module reads the same tensor, and
    the permutation would change what it computes."""
    registry = registry or get_registry()
    tied = set(model.tied) | set(model.tied.values())
    seen: set[str] = set()
    spaces = []
    for path in model.order:
        info = model.nodes[path]
        if info.module_path in seen:
            continue
        seen.add(info.module_path)
        spec = registry.get(info.block)
        if spec is None:
            raise SsmgraphError(f"{path}: block {info.block!r} is not in the registry the model is inspected with")
        module = model.get_submodule(info.module_path)
        for bound in block_spaces(spec, info.in_types, info.args, module, info.module_path):
            if not any(bound.param_key(axis) in tied for axis in bound.space.axes):
                spaces.append(bound)
    return spaces


def random_permutations(spaces: Sequence[BoundSpace], generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """A uniformly random permutation of every space."""
    return {s.key: torch.randperm(s.size, generator=generator) for s in spaces}


def permute_state(state: Mapping[str, Tensor], spaces: Sequence[BoundSpace], perms: Mapping[str, Tensor]) -> StateDict:
    """``state`` with each space in ``perms`` permuted on all its axes (other tensors shared, not copied)."""
    by_key = {s.key: s for s in spaces}
    unknown = sorted(set(perms) - set(by_key))
    if unknown:
        raise ValueError(f"no permutation space {unknown[0]!r} among {', '.join(by_key) or 'none'}")
    out = dict(state)
    for key, perm in perms.items():
        space = by_key[key]
        _check_perm(space, perm)
        for axis in space.space.axes:
            problem = _misfit(out, space, axis)
            if problem:
                raise ValueError(f"cannot permute {key}: {problem}")
            name = space.param_key(axis)
            out[name] = _permuted(out[name], axis, space.size, perm)
    return out


def weight_matching(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor], spaces: Sequence[BoundSpace], *, iters: int = 20, seed: int = 0
) -> tuple[dict[str, Tensor], StateDict]:
    """Align ``b`` onto ``a``: the permutations ``p`` of ``b``'s spaces that maximise the summed
    inner product of the two models' weights, and ``permute_state(b, spaces, p)``.

    At most ``iters`` sweeps; ``seed`` fixes the order spaces are visited in."""
    for space in spaces:
        for axis in space.space.axes:
            for label, state in (("a", a), ("b", b)):
                problem = _misfit(state, space, axis)
                if problem:
                    raise ValueError(f"cannot match {space.key} in model {label}: {problem}")
            name = space.param_key(axis)
            if a[name].shape != b[name].shape:
                raise ValueError(f"{name}: shape {tuple(a[name].shape)} in model a but {tuple(b[name].shape)} in model b")
    touching: dict[str, list[tuple[BoundSpace, int]]] = {}
    for space in spaces:
        for k, axis in enumerate(space.space.axes):
            touching.setdefault(space.param_key(axis), []).append((space, k))
    perms = {s.key: torch.arange(s.size) for s in spaces}
    generator = torch.Generator().manual_seed(seed)
    for _ in range(iters):
        changed = False
        for i in torch.randperm(len(spaces), generator=generator).tolist():
            space = spaces[i]
            sim = _similarity(a, b, space, touching, perms)
            _, cols = linear_sum_assignment(sim.numpy(), maximize=True)
            new, units = torch.as_tensor(cols, dtype=torch.long), torch.arange(space.size)
            old_score, new_score = sim[units, perms[space.key]].sum().item(), sim[units, new].sum().item()
            if new_score > old_score + 1e-12 * (1 + abs(old_score)):  # only a strict gain: ties never flip
                perms[space.key], changed = new, True
        if not changed:
            break
    return perms, permute_state(b, spaces, perms)


def _similarity(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor], space: BoundSpace, touching: Mapping[str, list[tuple[BoundSpace, int]]], perms: Mapping[str, Tensor]
) -> Tensor:
    """sim[i, j] = ⟨unit i of a, unit j of b⟩ summed over the space's axes, with b permuted on
    every other (space, axis) of the same tensor at its current permutation."""
    sim = torch.zeros(space.size, space.size, dtype=torch.float64)
    for k, axis in enumerate(space.space.axes):
        name = space.param_key(axis)
        wb = b[name]
        for other, j in touching[name]:
            if (other.key, j) != (space.key, k):
                wb = _permuted(wb, other.space.axes[j], other.size, perms[other.key])
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


def _misfit(state: Mapping[str, Tensor], space: BoundSpace, axis: PermAxis) -> str | None:
    """Why the space's units cannot lie where ``axis`` says in ``state`` (None when they can)."""
    name, size = space.param_key(axis), space.size
    t = state.get(name)
    if t is None:
        inside = space.module + "." if space.module else ""
        params = [k[len(inside) :] for k in state if k.startswith(inside)]
        return f"there is no parameter {name!r} ({space.module or 'the module'} has {', '.join(params) or 'none'})"
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


def _check_perm(space: BoundSpace, perm: Tensor) -> None:
    if perm.dtype not in (torch.int64, torch.int32) or perm.shape != (space.size,) or not torch.equal(perm.sort().values.cpu(), torch.arange(space.size, dtype=perm.dtype)):
        raise ValueError(
            f"the permutation of {space.key} must be an integer tensor holding 0..{space.size - 1} once each, "
            f"got {perm.dtype} of shape {tuple(perm.shape)}: {perm.flatten()[:8].tolist()}{' ...' if perm.numel() > 8 else ''}"
        )
