"""Aligning one model onto another: the permutations of its spaces that match the other's.

Weight matching (Ainsworth, Hayase, Srinivasa 2023, "Git Re-Basin", §3.2) maximises
Σ ⟨θ_A, π(θ_B)⟩ over the permutations of every space. Spaces can share a tensor (Mamba's
x_proj has the channels on its columns and the state entries on its rows; every projection
has a residual axis and an internal one), so as in Git Re-Basin each space in turn is one
linear assignment with everything else held fixed, visited in a seeded random order until a
sweep changes nothing. Activation matching correlates the units' activations on the same
inputs instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ssmgraph.graph.model import CompiledModel
from ssmgraph.graph.perm_apply import StateDict, permute_state, permuted
from ssmgraph.graph.perm_spaces import GraphSpace, Space, misfit
from ssmgraph.registry.specs import PermAxis


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
                problem = misfit(state, name, axis, space.size, space.module)
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
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    space: Space,
    touching: Mapping[str, list[tuple[Space, PermAxis]]],
    perms: Mapping[str, Tensor],
) -> Tensor:
    """sim[i, j] = ⟨unit i of a, unit j of b⟩ summed over the space's axes, with b permuted on
    every other (space, axis) of the same tensor at its current permutation."""
    sim = torch.zeros(space.size, space.size, dtype=torch.float64)
    for name, axis in space.bound_axes():
        wb = b[name]
        for other, other_axis in touching[name]:
            if (other.key, other_axis) != (space.key, axis):
                wb = permuted(wb, other_axis, other.size, perms[other.key])
        sim += _units(a[name], axis, space.size) @ _units(wb, axis, space.size).T
    return sim


def _units(t: Tensor, axis: PermAxis, size: int) -> Tensor:
    """(size, rest): the units of ``t`` along ``axis``, each flattened with its chunks and group."""
    dim = axis.axis
    seg = t.detach().narrow(dim, axis.start, axis.chunks * size * axis.group)
    split = seg.reshape(*seg.shape[:dim], axis.chunks, size, axis.group, *seg.shape[dim + 1 :])
    return split.movedim(dim + 1, 0).reshape(size, -1).to(torch.float64).cpu()
