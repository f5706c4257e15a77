"""A block configured for the checks (:class:`BlockCase`): its arguments checked and filled in,
and example inputs its shape rule accepts."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ssmgraph.registry.plugins import get_registry
from ssmgraph.registry.specs import BlockSpec, Capabilities, ShapeError, TensorType
from ssmgraph.testing.declaration import signature_problems, spec_location, unknown_arguments

BATCH, SEQ, DIM = 2, 8, 8
"""Concrete sizes the checks run at (the symbolic ``batch``/``seq`` dims become these); ``DIM``
is the feature width tried first."""

F64 = torch.float64


@dataclass(frozen=True)
class BlockCase:
    """One configured block under test: its spec, full arguments and example input types."""

    spec: BlockSpec
    args: Mapping[str, Any]
    in_types: tuple[TensorType, ...]
    out_type: TensorType
    caps: Capabilities
    given: Mapping[str, Any] = field(default_factory=dict)
    """The arguments as given (an ``examples`` entry, ``--set``), before defaults were filled in."""

    @property
    def label(self) -> str:
        """The block and the argument set it was given: ``mix.attention[heads=2]``."""
        return self.spec.name + ("" if not self.given else "[" + ",".join(f"{k}={v}" for k, v in self.given.items()) + "]")

    def build(self, dtype: torch.dtype = F64, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        module = self.spec.factory(list(self.in_types), **self.args)
        return module.to(dtype).eval()

    def inputs(self, dtype: torch.dtype = F64, seed: int = 0, seq: int = SEQ, batch: int = BATCH) -> list[Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return [_example(t, dtype, gen, seq, batch) for t in self.in_types]

    def expected_shape(self, seq: int = SEQ, batch: int = BATCH) -> tuple[int, ...]:
        sizes = {"batch": batch, "seq": seq}
        return tuple(sizes.get(d, d) if isinstance(d, str) else d for d in self.out_type.shape)

    @property
    def sequence_out(self) -> bool:
        """Whether the output keeps a sequence axis at position 1 (heads that pool do not)."""
        return len(self.out_type.shape) >= 2 and self.out_type.shape[1] == "seq"


def _example(t: TensorType, dtype: torch.dtype, gen: torch.Generator, seq: int, batch: int) -> Tensor:
    sizes = {"batch": batch, "seq": seq}
    shape = tuple(sizes[d] if isinstance(d, str) else d for d in t.shape)
    if t.dtype == "int":
        return torch.randint(0, 2, shape, generator=gen)
    return torch.randn(shape, generator=gen, dtype=dtype)


def candidate_inputs(args: Mapping[str, Any]) -> list[TensorType]:
    """Example input types to try, in order: float features of width ``DIM``, then of widths that
    follow the block's integer arguments (``heads=3``: 6, 12, 24, ...; ``d_model=20``: 20, ...),
    then token ids."""
    sizes = [v for v in args.values() if isinstance(v, int) and not isinstance(v, bool) and 2 <= v <= 4096]
    widths = {v * k for v in sizes for k in (1, 2, 4, 8) if k == 1 or v * k <= 256}
    if sizes and (common := math.lcm(*sizes)) <= 256:
        widths |= {common * k for k in (1, 2, 4) if common * k <= 256}
    ordered = [DIM, *sorted(w for w in widths if w >= 4 and w != DIM)]
    return [*(TensorType(("batch", "seq", w)) for w in ordered), TensorType(("batch", "seq"), "int")]


def make_case(block: str | BlockSpec, args: Mapping[str, Any] | None = None, *, example: int | None = None) -> BlockCase:
    """Configure a block for the checks: check arguments, fill defaults, pick example inputs.

    The example inputs are the first of :func:`candidate_inputs` that the spec's shape rule
    accepts on every port (two tensors for a variadic block). ``example``: the index of the
    spec's ``examples`` entry ``args`` come from; a mistake in it is reported at the spec."""
    spec = lookup(block)
    given = dict(args or {})
    subject = f"{spec_location(spec)}: examples[{example}]" if example is not None else spec.name
    unknown, known = unknown_arguments(spec, given)
    if unknown and example is not None:
        raise ValueError(f"{subject} names {', '.join(unknown)}, not a parameter of the block {known}")
    if unknown:
        raise ValueError(f"{spec.name} has no parameter {', '.join(unknown)} {known}")
    declared = signature_problems(spec)
    if declared:
        raise ValueError(f"{spec_location(spec)}: " + "; ".join(declared))
    missing = [p.name for p in spec.params if p.required and p.name not in given]
    if missing:
        raise ValueError(
            f"{subject} needs {', '.join(missing)}: pass them as args (CLI: --set {missing[0]}=...), "
            "or declare example argument sets in the spec's `examples`"
        )
    full = {**spec.defaults(), **given}
    for name, value in given.items():
        coerced, problem = spec.param(name).check(value)
        if problem:
            raise ValueError(f"{subject}: parameter {name}: {problem}")
        full[name] = coerced
    ports = 2 if spec.variadic else len(spec.inputs)
    problems = []
    for candidate in candidate_inputs(full):
        in_types = (candidate,) * ports
        try:
            out = spec.shape(list(in_types), **full)
        except ShapeError as exc:
            problems.append(f"{candidate}: {exc}")
            continue
        return BlockCase(spec, full, in_types, out, spec.capabilities(full), given)
    shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
    raise ValueError(f"{subject}: the shape rule accepts none of the example inputs ({shown})")


def lookup(block: str | BlockSpec) -> BlockSpec:
    """The spec of an installed block by name (a spec is returned as it is)."""
    if isinstance(block, BlockSpec):
        return block
    registry = get_registry()
    spec = registry.get(block)
    if spec is None:
        raise ValueError(f"unknown block {block!r}; {registry.suggest(block)}")
    return spec


def block_cases(blocks: Iterable[Any]) -> list[BlockCase]:
    """Cases for names, specs or ``(name, args)`` pairs; a bare name or spec expands to its
    spec's ``examples`` (or its defaults when it declares none)."""
    cases = []
    for item in blocks:
        if isinstance(item, tuple):
            cases.append(make_case(*item))
            continue
        spec = lookup(item)
        if not spec.examples:
            cases.append(make_case(spec))
        cases.extend(make_case(spec, example, example=i) for i, example in enumerate(spec.examples))
    return cases
