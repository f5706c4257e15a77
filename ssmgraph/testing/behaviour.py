"""Checks of what the block computes: shapes and dtypes, gradients, causality, stepping, and
the mixers' state and mask contract (docs/plugins.md, "The block contract")."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

from ssmgraph.testing.asserts import SkipCheck, close, close_states, step_loop
from ssmgraph.testing.cases import BATCH, F64, SEQ, BlockCase


def _float_grad_inputs(xs: Sequence[Tensor]) -> list[Tensor]:
    return [x.requires_grad_() for x in xs if x.is_floating_point()]


def check_shapes_and_dtypes(case: BlockCase) -> None:
    for dtype in (torch.float32, F64):
        module = case.build(dtype)
        for seq in (SEQ, 3):
            y = module(*case.inputs(dtype, seq=seq))
            if not isinstance(y, Tensor):
                raise AssertionError(f"forward returned {type(y).__name__}, not a tensor")  # noqa: TRY004 - a failed check
            expected = case.expected_shape(seq=seq)
            if tuple(y.shape) != expected:
                raise AssertionError(f"{dtype}, length {seq}: output shape {tuple(y.shape)}, the shape rule says {expected}")
            if case.out_type.dtype == "float" and y.dtype != dtype:
                raise AssertionError(f"a {dtype} block returned {y.dtype}")
            if case.out_type.dtype == "int" and y.is_floating_point():
                raise AssertionError(f"the shape rule says int, forward returned {y.dtype}")
            if y.is_floating_point() and not torch.isfinite(y).all():
                raise AssertionError(f"{dtype}, length {seq}: non-finite outputs")


def check_gradients(case: BlockCase) -> None:
    module = case.build()
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    xs = case.inputs()
    float_xs = _float_grad_inputs(xs)
    if not params and not float_xs:
        raise SkipCheck("no parameters and no float inputs")
    y = module(*xs)
    if not y.is_floating_point():
        raise SkipCheck("the output is not differentiable (integer)")
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    (y * w).sum().backward()
    problems = []
    for name, p in params.items():
        if p.grad is None:
            problems.append(f"no gradient reached {name}")
        elif not torch.isfinite(p.grad).all():
            problems.append(f"non-finite gradient at {name}")
        elif not p.grad.any():
            problems.append(f"zero gradient at {name}")
    depends_on_input = case.spec.role != "embed"  # position embeddings ignore input values
    for i, x in enumerate(float_xs if depends_on_input else ()):
        if x.grad is None or not torch.isfinite(x.grad).all():
            problems.append(f"no finite gradient reached input {i}")
    if problems:
        raise AssertionError("; ".join(problems))


def _perturbed(x: Tensor, positions: slice, seed: int) -> Tensor:
    x2 = x.detach().clone()
    gen = torch.Generator().manual_seed(seed)
    if x.is_floating_point():
        x2[:, positions] += torch.randn(x2[:, positions].shape, generator=gen, dtype=x.dtype)
    else:
        x2[:, positions] = 1 - x2[:, positions]  # flips every id in {0, 1}
    return x2


def check_causality(case: BlockCase) -> None:
    if not case.caps.causal:
        raise SkipCheck("declared non-causal")
    if not case.sequence_out:
        raise SkipCheck("the output has no sequence axis")
    module = case.build()
    xs = case.inputs()
    y = module(*xs)
    scale = y.abs().max().clamp_min(1e-12)

    def with_changed(i: int, positions: slice, t: int) -> Tensor:
        return module(*xs[:i], _perturbed(xs[i], positions, t), *xs[i + 1 :])

    # Causal is about the sequence being processed, the first input (cross-attention's memory
    # is context, read whole); every cut, as a leak of one position shows at one cut only.
    for t in range(SEQ - 1):
        leak = ((with_changed(0, slice(t + 1, None), t)[:, : t + 1] - y[:, : t + 1]).abs().max() / scale).item()
        if leak > 1e-10:
            raise AssertionError(f"changing inputs after position {t} changed outputs at or before it (by {leak:.3g})")
    if case.caps.pointwise:  # each position on its own, in every input
        for i, t in itertools.product(range(len(xs)), range(SEQ)):
            moved = (with_changed(i, slice(t, t + 1), t) - y).abs().reshape(y.shape[0], y.shape[1], -1).amax(-1).amax(0)
            if (torch.cat([moved[:t], moved[t + 1 :]]) > 1e-10 * scale).any():
                which = f"input {i}" if len(xs) > 1 else "the input"
                raise AssertionError(f"declared pointwise, but changing {which} at position {t} changed other positions")


def check_step_equals_forward(case: BlockCase) -> None:
    if case.caps.step:
        module = case.build()
        for name in ("init_state", "step"):
            if not callable(getattr(module, name, None)):
                raise AssertionError(f"declares the step capability but has no {name}()")  # noqa: TRY004 - a failed check
        (x, *rest) = case.inputs()
        if rest:
            raise SkipCheck("stepping covers single-input blocks")
        x.requires_grad_()
        y = module(x)
        ys, _ = step_loop(module, x)
        close(ys, y, "stepped outputs vs forward")
        params = [x, *(p for p in module.parameters() if p.requires_grad)]
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=y.dtype)
        g_fwd = torch.autograd.grad((y * w).sum(), params, allow_unused=True)
        g_step = torch.autograd.grad((ys * w).sum(), params, allow_unused=True)
        names = ["input", *(n for n, p in module.named_parameters() if p.requires_grad)]
        for name, a, b in zip(names, g_step, g_fwd):
            if (a is None) != (b is None):
                raise AssertionError(f"gradient of {name}: reached in one mode only")
            if a is not None:
                close(a, b, f"gradient of {name}, stepped vs forward")
    elif case.caps.pointwise:
        if not case.sequence_out:
            raise SkipCheck("the output has no sequence axis")
        module = case.build()
        xs = case.inputs()
        y = module(*xs)
        ys = torch.cat([module(*(x[:, t : t + 1] for x in xs)) for t in range(SEQ)], 1)
        close(ys, y, "forward on length-1 slices vs forward")
    else:
        raise SkipCheck("no step capability")


def _takes_state(case: BlockCase) -> None:
    if case.spec.role != "mix":
        raise SkipCheck("the state and mask contract is the mixers'")
    if not case.caps.step:
        raise SkipCheck("no recurrent state (no step capability)")
    if len(case.in_types) != 1:
        raise SkipCheck("covers single-input mixers")


def check_state_carry(case: BlockCase) -> None:
    _takes_state(case)
    module = case.build()
    (x,) = case.inputs()
    y, state = module(x, return_state=True)
    _, stepped_state = step_loop(module, x)
    close_states(state, stepped_state, "forward", "stepped")
    for split in (1, SEQ // 2 + 1):
        y1, s1 = module(x[:, :split], return_state=True)
        y2, s2 = module(x[:, split:], state=s1, return_state=True)
        close(torch.cat([y1, y2], 1), y, f"outputs in two chunks split at {split}, state carried, vs one pass")
        close_states(s2, state, "two chunks", "one pass")


def check_mask(case: BlockCase) -> None:
    if case.spec.role != "mix":
        raise SkipCheck("masks are part of the mixer contract")
    if len(case.in_types) != 1:
        raise SkipCheck("covers single-input mixers")
    module = case.build()
    (x,) = case.inputs()
    lengths = torch.tensor([SEQ, SEQ // 2 + 1])
    mask = torch.arange(SEQ)[None] < lengths[:, None]
    if case.caps.step:
        # States are compared by what they do: one more step from the masked run's final
        # state must equal one step from the state of the sequence run alone (a KV cache
        # and a fixed-size state are then checked alike).
        y, state = module(x, mask=mask, return_state=True)
        z = torch.randn(BATCH, x.shape[-1], generator=torch.Generator().manual_seed(3), dtype=x.dtype)
        z_next, _ = module.step(z, state)
        for b, n in enumerate(lengths.tolist()):
            yb, sb = module(x[b : b + 1, :n], return_state=True)
            close(y[b : b + 1, :n], yb, f"valid outputs of sequence {b} (length {n}) vs running it alone")
            zb, _ = module.step(z[b : b + 1], sb)
            close(z_next[b : b + 1], zb, f"a step after the masked sequence {b} (length {n}) vs after running it alone")
    else:
        y = module(x, mask=mask)
        x2 = x.clone()
        x2[1, lengths[1] :] = 100.0
        close(module(x2, mask=mask)[1, : lengths[1]], y[1, : lengths[1]], "valid outputs after changing the padding", 1e-10)
        for b, n in enumerate(lengths.tolist()):  # nor how much padding there is
            close(y[b : b + 1, :n], module(x[b : b + 1, :n]), f"valid outputs of sequence {b} (length {n}) vs running it alone")
