"""Applying permutations to a state dict.

A permutation of a space is an index tensor ``p`` over its units: unit i afterwards is unit
``p[i]`` before (``x[p]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ssmgraph.graph.perm_spaces import Space, misfit
from ssmgraph.registry.specs import PermAxis

StateDict = dict[str, Tensor]


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
            problem = misfit(out, name, axis, space.size, space.module)
            if problem:
                raise ValueError(f"cannot permute {key}: {problem}")
            out[name] = permuted(out[name], axis, space.size, perm)
        ties.update(space.ties)
    for alias, target in ties.items():
        if alias in out and target in out:
            out[alias] = out[target]
    return out


def permuted(t: Tensor, axis: PermAxis, size: int, perm: Tensor) -> Tensor:
    """``t`` with the units on ``axis`` reordered: unit i of every chunk becomes unit perm[i]."""
    length = t.shape[axis.axis]
    units = (torch.arange(axis.chunks)[:, None, None] * size + perm.cpu()[None, :, None]) * axis.group + torch.arange(axis.group)
    index = torch.arange(length)
    index[axis.start : axis.start + units.numel()] = axis.start + units.flatten()
    return t.index_select(axis.axis, index.to(t.device))


def _check_perm(space: Space, perm: Tensor) -> None:
    if (
        perm.dtype not in (torch.int64, torch.int32)
        or perm.shape != (space.size,)
        or not torch.equal(perm.sort().values.cpu(), torch.arange(space.size, dtype=perm.dtype))
    ):
        raise ValueError(
            f"the permutation of {space.key} must be an integer tensor holding 0..{space.size - 1} once each, "
            f"got {perm.dtype} of shape {tuple(perm.shape)}: {perm.flatten()[:8].tolist()}{' ...' if perm.numel() > 8 else ''}"
        )
