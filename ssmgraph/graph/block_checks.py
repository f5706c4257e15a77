"""Build-time checks of blocks: a factory that asks for more memory than exists (the user's
sizes, not the plugin's bug), and a plugin's forward that breaks its own shape rule (E241)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from ssmgraph.errors import Collector
from ssmgraph.registry.specs import TensorType

if TYPE_CHECKING:  # the compiler imports this module: its types are for annotations only
    from ssmgraph.graph.infer import TypedNode

BUILTIN_PACKAGE = "ssmgraph"
EXAMPLE_BATCH, EXAMPLE_SEQ = 3, 5
"""Sizes of the example forward that checks each block against its shape rule: ``batch`` is
3, every other symbolic dim (``seq``, ``src_len``) 5 — small, odd and unequal, so a swapped or
padded axis shows."""


_TOO_LARGE = re.compile(
    r"can't allocate memory|tried to allocate|out of memory|size calculation overflowed|integer multiplication overflow",
    re.IGNORECASE,
)
_ALLOCATED = re.compile(r"tried to allocate (\d+) bytes")


def too_large(exc: Exception) -> bool:
    """Whether a factory failed because its sizes do not fit in memory (or in a tensor's size)."""
    return isinstance(exc, (MemoryError, OverflowError)) or (isinstance(exc, RuntimeError) and bool(_TOO_LARGE.search(str(exc))))


def allocation(exc: Exception) -> str:
    """What was too large: the bytes one tensor asked for, or torch's own words."""
    found = _ALLOCATED.search(str(exc))
    if found is None:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'out of memory'}"
    size, unit = float(found.group(1)), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"one of its tensors would take {size:,.1f} {unit}, more than this machine's memory"


def sizes(item: TypedNode) -> str:
    """The node's integer arguments and input types: where a too-large size comes from."""
    ints = [f"{k}={v:,}" for k, v in item.args.items() if isinstance(v, int) and not isinstance(v, bool)]
    inputs = f"input{'s' if len(item.in_types) > 1 else ''} {', '.join(map(str, item.in_types))}"
    return ", ".join([*ints, inputs])


def check_forwards(items: list[TypedNode], modules: dict[str, nn.Module], errors: Collector) -> None:
    """Run each distinct block configuration once on tiny example inputs and compare its output
    with the type its shape rule promised (E241): a plugin whose forward breaks its own shape
    rule fails the build, naming itself, instead of deep inside training.

    Built-in blocks are not run: ssmgraph's own suite checks them (the conformance kit), and
    some are costly to call (mix.s4 computes its whole kernel). One call per (block, arguments,
    input types), so a 2,000-layer stack costs what one layer does. A forward that raises on
    the example (a block that needs longer sequences) is not judged here. Nothing runs when
    modules are built on the meta device."""
    if torch.empty(0).is_meta:
        return
    seen: set[tuple[str, str, tuple[TensorType, ...]]] = set()
    for item in items:
        key = (item.spec.name, repr(sorted(item.args.items())), tuple(item.in_types))
        module = modules.get(item.node.module_path)
        if module is None or item.spec.plugin == BUILTIN_PACKAGE or key in seen:
            continue
        seen.add(key)
        got, promised = _example_output(module, item.in_types), _described_type(item.out_type)
        if got is not None and got != promised:
            shown_in = ", ".join(str(t) for t in item.in_types)
            errors.add(
                "E241",
                f"block {item.spec.name} (from {item.spec.plugin}) returned {got} for inputs {shown_in} "
                f"at batch={EXAMPLE_BATCH}, seq={EXAMPLE_SEQ}, but its shape rule says {item.out_type} ({promised})",
                item.node.mark,
                item.node.path,
                f"the block's forward and its shape rule disagree: report it to the authors of {item.spec.plugin} (`ssmgraph check {item.spec.name}` runs its conformance checks)",
            )


def _example_output(module: nn.Module, in_types: list[TensorType]) -> str | None:
    """The type and shape ``module`` returns for example inputs of ``in_types``; None when it raises."""
    try:
        with _side_effect_free(module):
            out = module(*(_example(t) for t in in_types))
    except Exception:  # noqa: BLE001 - a forward that cannot run on the example is not a shape mismatch
        return None
    return _described(out)


def _concrete(ttype: TensorType) -> tuple[int, ...]:
    return tuple((EXAMPLE_BATCH if d == "batch" else EXAMPLE_SEQ) if isinstance(d, str) else d for d in ttype.shape)


def _example(ttype: TensorType) -> torch.Tensor:
    """Zeros of the type's shape at the example sizes: token ids 0 fit any vocabulary."""
    return torch.zeros(_concrete(ttype), dtype=torch.long if ttype.dtype == "int" else torch.get_default_dtype())


def _described(out: object) -> str:
    if not isinstance(out, torch.Tensor):
        return f"a {type(out).__name__}, not a tensor"
    return f"{'float' if out.is_floating_point() or out.is_complex() else 'int'}[{', '.join(map(str, out.shape))}]"


def _described_type(ttype: TensorType) -> str:
    return f"{ttype.dtype}[{', '.join(map(str, _concrete(ttype)))}]"


@contextlib.contextmanager
def _side_effect_free(module: nn.Module) -> Iterator[None]:
    """Run ``module`` without leaving a trace: no autograd graph, the random stream and every
    sub-module's train/eval mode restored, eval mode meanwhile (no running statistics move)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            yield
    finally:
        for m, training in modes:
            m.training = training
