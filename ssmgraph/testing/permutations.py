"""The ``permutation_invariance`` check: a block's declared permutation spaces are checked by
permuting every unit of each one.

A random permutation of a small space is often the identity (one draw in two for two units),
and the identity passes whatever was declared, so every space is permuted by a derangement:
no unit stays where it was. A space of one unit cannot be permuted at all; the check says
which spaces it left out for that reason.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssmgraph.graph.perm_apply import permute_state
from ssmgraph.graph.perm_spaces import Space, block_io, block_spaces, io_bound_spaces
from ssmgraph.testing.asserts import SkipCheck, close
from ssmgraph.testing.cases import BlockCase


def derangement(size: int, generator: torch.Generator) -> Tensor:
    """A random permutation of ``size`` (at least 2) units that moves every unit."""
    if size < 2:
        raise ValueError(f"a space of {size} unit(s) has no permutation that moves its units")
    identity = torch.arange(size)
    while True:  # about e draws on average
        perm = torch.randperm(size, generator=generator)
        if not (perm == identity).any():
            return perm


def _moving_permutations(spaces: list[Space], generator: torch.Generator) -> dict[str, Tensor]:
    """A derangement of every space of two units or more (one of one unit stays as it is)."""
    return {s.key: derangement(s.size, generator) for s in spaces if s.size > 1}


def check_permutation_invariance(case: BlockCase) -> str:
    if case.spec.perm_spaces is None:
        raise SkipCheck("declares no permutation spaces")
    module = case.build()
    single = sorted({s.name for s in case.spec.perm_spaces(list(case.in_types), **case.args) if s.size < 2})
    left_out = f"; {', '.join(single)} of one unit in this configuration cannot be permuted" if single else ""
    spaces = block_spaces(case.spec, case.in_types, case.args, module)
    io = block_io(case.spec, case.in_types, case.args, module, out_type=case.out_type)
    if not spaces and not io.declared:
        raise SkipCheck("no declared space has two units or more in this configuration" + left_out)
    xs = case.inputs()
    expected = module(*xs)
    generator = torch.Generator().manual_seed(0)
    if spaces:  # internal spaces: the outputs do not change
        permuted = case.build(seed=1)
        perms = _moving_permutations(spaces, generator)
        permuted.load_state_dict(permute_state(module.state_dict(), spaces, perms))
        close(permuted(*xs), expected, f"outputs after permuting {', '.join(s.space.name for s in spaces)}", 1e-9)
    every = spaces
    if io.declared:  # input/output features: permuted inputs give the correspondingly permuted outputs
        features, in_keys, out_key = io_bound_spaces(case.spec.name, io, len(case.in_types))
        every = spaces + features
        permuted = case.build(seed=1)
        perms = _moving_permutations(every, generator)
        permuted.load_state_dict(permute_state(module.state_dict(), every, perms))
        moved = [x[..., perms[in_keys[i]]] if in_keys.get(i) in perms else x for i, x in enumerate(xs)]
        want = expected[..., perms[out_key]] if out_key in perms else expected
        names = ", ".join(s.space.name for s in every)
        close(permuted(*moved), want, f"outputs after permuting {names} with the inputs' and output's features", 1e-9)
    moved_units = ", ".join(f"{s.space.name} ({s.size} units)" for s in every if s.size > 1)
    return f"every unit moved in {moved_units}" + left_out
