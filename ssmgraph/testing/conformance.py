"""The block conformance kit: does a block keep the contract of docs/plugins.md?

In the spirit of scikit-learn's ``check_estimator``: one function runs every check that
applies to a configured block, chosen by the capabilities its spec declares, and a pytest
helper turns the same checks into one test each. Plugin authors run it on their blocks;
our own suite runs it on every built-in block.

    from ssmgraph.testing import check_block
    report = check_block("mix.s4d", args={"bidirectional": True})   # raises on failure

A check passes, fails (an ``AssertionError`` with a readable message), or is skipped with
the reason it does not apply. Checks known to fail are listed in ``expected_failed_checks``
(name → reason): they are reported as expected failures, and a listed check that passes
is an error, so the list never goes stale.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import tempfile
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ssmgraph.registry.specs import BlockSpec, Capabilities, ShapeError, TensorType

BATCH, SEQ, DIM = 2, 8, 8
"""Concrete sizes the checks run at (the symbolic ``batch``/``seq`` dims become these)."""

F64 = torch.float64


class SkipCheck(Exception):
    """Raised by a check that does not apply to the configured block; the message says why."""


class ConformanceError(AssertionError):
    """Raised by :func:`check_block` when a check fails (or an expected failure passes)."""


@dataclass(frozen=True)
class BlockCase:
    """One configured block under test: its spec, full arguments and example input types."""

    spec: BlockSpec
    args: Mapping[str, Any]
    in_types: tuple[TensorType, ...]
    out_type: TensorType
    caps: Capabilities

    @property
    def label(self) -> str:
        changed = {k: v for k, v in self.args.items() if self.spec.param(k) is None or self.spec.param(k).default != v}
        return self.spec.name + ("" if not changed else "[" + ",".join(f"{k}={v}" for k, v in changed.items()) + "]")

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


_CANDIDATE_INPUTS = (TensorType(("batch", "seq", DIM)), TensorType(("batch", "seq"), "int"))


def make_case(block: str | BlockSpec, args: Mapping[str, Any] | None = None) -> BlockCase:
    """Configure a block for the checks: fill defaults, check arguments, pick example inputs.

    The example inputs are the first of ``float[batch, seq, 8]`` and ``int[batch, seq]`` that
    the spec's shape rule accepts on every port (two tensors for a variadic block)."""
    spec = _lookup(block)
    given = dict(args or {})
    unknown = sorted(k for k in given if spec.param(k) is None)
    if unknown:
        known = ", ".join(p.name for p in spec.params) or "none"
        raise ValueError(f"{spec.name} has no parameter {', '.join(unknown)} (its parameters: {known})")
    missing = [p.name for p in spec.params if p.required and p.name not in given]
    if missing:
        raise ValueError(
            f"{spec.name} needs {', '.join(missing)}: pass them as args (CLI: --set {missing[0]}=...), "
            "or declare example argument sets in the spec's `examples`"
        )
    full = {**spec.defaults(), **given}
    for name, value in given.items():
        coerced, problem = spec.param(name).check(value)
        if problem:
            raise ValueError(f"{spec.name}: parameter {name}: {problem}")
        full[name] = coerced
    ports = 2 if spec.variadic else len(spec.inputs)
    problems = []
    for candidate in _CANDIDATE_INPUTS:
        in_types = (candidate,) * ports
        try:
            out = spec.shape(list(in_types), **full)
        except ShapeError as exc:
            problems.append(f"{candidate}: {exc}")
            continue
        return BlockCase(spec, full, in_types, out, spec.capabilities(full))
    raise ValueError(f"{spec.name}: the shape rule accepts none of the example inputs ({'; '.join(problems)})")


def _lookup(block: str | BlockSpec) -> BlockSpec:
    if isinstance(block, BlockSpec):
        return block
    from ssmgraph.registry.plugins import get_registry

    registry = get_registry()
    spec = registry.get(block)
    if spec is None:
        raise ValueError(f"unknown block {block!r}; {registry.suggest(block)}")
    return spec


# ---------------------------------------------------------------------------------------
# The checks. Each takes a BlockCase; it raises AssertionError on failure, SkipCheck when it
# does not apply.


@dataclass(frozen=True)
class Check:
    name: str
    doc: str
    run: Callable[[BlockCase], None]


def _close(a: Tensor, b: Tensor, what: str, rtol: float = 1e-6) -> None:
    if a.shape != b.shape:
        raise AssertionError(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.is_complex() or b.is_complex():
        a, b = torch.view_as_real(a.resolve_conj()), torch.view_as_real(b.resolve_conj())
    if a.numel() == 0:
        return
    a, b = a.double(), b.double()
    scale = b.abs().max().clamp_min(1e-12)
    err = ((a - b).abs().max() / scale).item()
    if not err <= rtol:
        raise AssertionError(f"{what}: relative difference {err:.3g} exceeds {rtol:g}")


def _flat(state: Any) -> list[Tensor]:
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, (tuple, list)):
        return [t for s in state for t in _flat(s)]
    if isinstance(state, Mapping):
        return [t for k in sorted(state) for t in _flat(state[k])]
    if state is None:
        return []
    raise AssertionError(f"a state holds {type(state).__name__}; states are tensors, tuples, lists or dicts of them")


def _float_grad_inputs(xs: Sequence[Tensor]) -> list[Tensor]:
    return [x.requires_grad_() for x in xs if x.is_floating_point()]


def check_spec(case: BlockCase) -> None:
    problems = case.spec.validate()
    if problems:
        raise AssertionError("malformed spec: " + "; ".join(problems))


def check_documented(case: BlockCase) -> None:
    spec, problems = case.spec, []
    if len(spec.doc.split()) < 3:
        problems.append(f"the spec's doc {spec.doc!r} does not say what the block computes")
    if not spec.reference:
        problems.append("no reference (the paper or code the block follows; 'ssmgraph' for an original design)")
    problems += [f"parameter {p.name!r} has no doc" for p in spec.params if len(p.doc.split()) < 2]
    if problems:
        raise AssertionError("; ".join(problems))


def check_shapes_and_dtypes(case: BlockCase) -> None:
    for dtype in (torch.float32, F64):
        module = case.build(dtype)
        for seq in (SEQ, 3):
            y = module(*case.inputs(dtype, seq=seq))
            if not isinstance(y, Tensor):
                raise AssertionError(f"forward returned {type(y).__name__}, not a tensor")
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


def _step_loop(module: nn.Module, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
    if state is None:
        state = module.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    ys = []
    for x_t in x.unbind(1):
        y_t, state = module.step(x_t, state)
        ys.append(y_t)
    return torch.stack(ys, 1), state


def check_step_equals_forward(case: BlockCase) -> None:
    if case.caps.step:
        module = case.build()
        for name in ("init_state", "step"):
            if not callable(getattr(module, name, None)):
                raise AssertionError(f"declares the step capability but has no {name}()")
        (x, *rest) = case.inputs()
        if rest:
            raise SkipCheck("stepping covers single-input blocks")
        x.requires_grad_()
        y = module(x)
        ys, _ = _step_loop(module, x)
        _close(ys, y, "stepped outputs vs forward")
        params = [x, *(p for p in module.parameters() if p.requires_grad)]
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=y.dtype)
        g_fwd = torch.autograd.grad((y * w).sum(), params, allow_unused=True)
        g_step = torch.autograd.grad((ys * w).sum(), params, allow_unused=True)
        names = ["input", *(n for n, p in module.named_parameters() if p.requires_grad)]
        for name, a, b in zip(names, g_step, g_fwd):
            if (a is None) != (b is None):
                raise AssertionError(f"gradient of {name}: reached in one mode only")
            if a is not None:
                _close(a, b, f"gradient of {name}, stepped vs forward")
    elif case.caps.pointwise:
        if not case.sequence_out:
            raise SkipCheck("the output has no sequence axis")
        module = case.build()
        xs = case.inputs()
        y = module(*xs)
        ys = torch.cat([module(*(x[:, t : t + 1] for x in xs)) for t in range(SEQ)], 1)
        _close(ys, y, "forward on length-1 slices vs forward")
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
    _, stepped_state = _step_loop(module, x)
    _close_states(state, stepped_state, "forward", "stepped")
    for split in (1, SEQ // 2 + 1):
        y1, s1 = module(x[:, :split], return_state=True)
        y2, s2 = module(x[:, split:], state=s1, return_state=True)
        _close(torch.cat([y1, y2], 1), y, f"outputs in two chunks split at {split}, state carried, vs one pass")
        _close_states(s2, state, "two chunks", "one pass")


def _close_states(a: Any, b: Any, what_a: str, what_b: str) -> None:
    """Two states part by part; a part one of them lacks is a failure, not a skipped part."""
    parts_a, parts_b = _flat(a), _flat(b)
    if len(parts_a) != len(parts_b):
        raise AssertionError(f"the final state has {len(parts_a)} parts after {what_a} but {len(parts_b)} after {what_b}")
    for i, (u, v) in enumerate(zip(parts_a, parts_b)):
        _close(u, v, f"final state part {i}, {what_a} vs {what_b}")


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
            _close(y[b : b + 1, :n], yb, f"valid outputs of sequence {b} (length {n}) vs running it alone")
            zb, _ = module.step(z[b : b + 1], sb)
            _close(z_next[b : b + 1], zb, f"a step after the masked sequence {b} (length {n}) vs after running it alone")
    else:
        y = module(x, mask=mask)
        x2 = x.clone()
        x2[1, lengths[1] :] = 100.0
        _close(module(x2, mask=mask)[1, : lengths[1]], y[1, : lengths[1]], "valid outputs after changing the padding", 1e-10)
        for b, n in enumerate(lengths.tolist()):  # nor how much padding there is
            _close(y[b : b + 1, :n], module(x[b : b + 1, :n]), f"valid outputs of sequence {b} (length {n}) vs running it alone")


def check_state_dict_round_trip(case: BlockCase) -> None:
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    source, target = case.build(seed=0), case.build(seed=1)
    state = source.state_dict()
    if set(state) != set(target.state_dict()):
        raise AssertionError("two builds with the same arguments have different state-dict keys")
    tensors = {k: v.contiguous() for k, v in state.items()}
    target.load_state_dict(st_load(st_save(tensors)), strict=True)
    xs = case.inputs()
    a, b = source(*xs), target(*xs)
    if a.is_floating_point():
        _close(b, a, "outputs after loading the state dict into a fresh build", 0.0)
    elif not torch.equal(a, b):
        raise AssertionError("outputs differ after loading the state dict into a fresh build")


def check_permutation_invariance(case: BlockCase) -> None:
    from ssmgraph.merge.permute import block_io, block_spaces, io_bound_spaces, permute_state, random_permutations

    if case.spec.perm_spaces is None:
        raise SkipCheck("declares no permutation spaces")
    module = case.build()
    spaces = block_spaces(case.spec, case.in_types, case.args, module)
    io = block_io(case.spec, case.in_types, case.args, module, out_type=case.out_type)
    if not spaces and not io.declared:
        raise SkipCheck("no declared space has two units or more in this configuration")
    xs = case.inputs()
    expected = module(*xs)
    generator = torch.Generator().manual_seed(0)
    if spaces:  # internal spaces: the outputs do not change
        permuted = case.build(seed=1)
        perms = random_permutations(spaces, generator)
        permuted.load_state_dict(permute_state(module.state_dict(), spaces, perms))
        _close(permuted(*xs), expected, f"outputs after permuting {', '.join(s.space.name for s in spaces)}", 1e-9)
    if io.declared:  # input/output features: permuted inputs give the correspondingly permuted outputs
        features, in_keys, out_key = io_bound_spaces(case.spec.name, io, len(case.in_types))
        every = spaces + features
        permuted = case.build(seed=1)
        perms = random_permutations(every, generator)
        permuted.load_state_dict(permute_state(module.state_dict(), every, perms))
        moved = [x[..., perms[in_keys[i]]] if i in in_keys else x for i, x in enumerate(xs)]
        want = expected[..., perms[out_key]] if out_key is not None else expected
        names = ", ".join(s.space.name for s in every)
        _close(permuted(*moved), want, f"outputs after permuting {names} with the inputs' and output's features", 1e-9)


def check_meta_device(case: BlockCase) -> None:
    with torch.device("meta"):
        module = case.spec.factory(list(case.in_types), **case.args)
    real = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if not t.is_meta]
    if real:
        raise AssertionError(f"built on the meta device, these tensors were still allocated: {', '.join(real[:5])}")
    module.to_empty(device="cpu")


def _blueprint_text(case: BlockCase) -> str:
    from ssmgraph.blueprint.yamlsafe import dump_yaml

    inputs = {}
    for i, t in enumerate(case.in_types):
        inputs[f"x{i}"] = {"dtype": "int64" if t.dtype == "int" else "float32", "shape": list(t.shape)}
    node = {"block": case.spec.name, "in": list(inputs) if len(inputs) > 1 else "x0"}
    changed = {k: v for k, v in case.args.items() if case.spec.param(k).required or case.spec.param(k).default != v}
    if changed:
        node["args"] = changed
    return dump_yaml({"ssmgraph": 1, "inputs": inputs, "nodes": {"block": node}, "outputs": {"y": "block"}})


@contextlib.contextmanager
def _registered(spec: BlockSpec) -> Iterator[None]:
    """Make the registry resolve ``spec.name`` to ``spec`` (a spec under test need not be
    installed yet, and a variant must not be shadowed by the installed one)."""
    from ssmgraph.registry.plugins import get_registry

    blocks = get_registry().blocks
    previous = blocks.get(spec.name)
    blocks[spec.name] = spec
    try:
        yield
    finally:
        if previous is None:
            del blocks[spec.name]
        else:
            blocks[spec.name] = previous


def check_blueprint_round_trip(case: BlockCase) -> None:
    import ssmgraph
    from ssmgraph.blueprint import load_blueprint

    with tempfile.TemporaryDirectory() as tmp, _registered(case.spec):
        path = Path(tmp) / "block.yaml"
        path.write_text(_blueprint_text(case))
        model = ssmgraph.build(load_blueprint(path)).double().eval()
        ssmgraph.save(model, Path(tmp) / "run")
        loaded = ssmgraph.load(Path(tmp) / "run").double().eval()
    xs = case.inputs()
    a, b = model(*xs), loaded(*xs)
    a, b = (a["y"], b["y"]) if isinstance(a, Mapping) else (a, b)
    if a.is_floating_point():
        _close(b, a, "outputs after ssmgraph.save and ssmgraph.load", 0.0)
    elif not torch.equal(a, b):
        raise AssertionError("outputs differ after ssmgraph.save and ssmgraph.load")


def check_torch_compile(case: BlockCase) -> None:
    import torch._dynamo

    module = case.build(torch.float32)
    xs = case.inputs(torch.float32)
    eager = module(*xs)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(module, backend="eager", fullgraph=True)(*xs)
    except Exception as exc:  # Dynamo raises many types; the first line says what broke the graph
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AssertionError(f"torch.compile(fullgraph=True) failed: {type(exc).__name__}: {first}") from None
    finally:
        torch._dynamo.reset()
    if eager.is_floating_point():
        _close(compiled, eager, "compiled vs eager outputs", 1e-5)


CHECKS: tuple[Check, ...] = (
    Check("spec", "the spec is well-formed (name, role, callables, parameters)", check_spec),
    Check("documented", "the block, its reference and every parameter are documented", check_documented),
    Check("shapes_and_dtypes", "outputs have the shape rule's shape, the module's dtype (fp32, fp64), any length", check_shapes_and_dtypes),
    Check("gradients", "gradients reach every parameter and float input, finite and non-zero", check_gradients),
    Check("causality", "causal blocks: no output sees a later input; pointwise blocks: none sees another position", check_causality),
    Check("step_equals_forward", "stepping equals forward, values and gradients (pointwise: length-1 slices)", check_step_equals_forward),
    Check("state_carry", "mixers: the returned state equals the stepped one; chunks with the state carried equal one pass", check_state_carry),
    Check("mask", "mixers: right padding never changes valid outputs; the final state is the last valid token's", check_mask),
    Check("state_dict_round_trip", "a state dict (through safetensors) reproduces the outputs in a fresh build", check_state_dict_round_trip),
    Check(
        "permutation_invariance",
        "permuting the units of every declared permutation space leaves the outputs unchanged; permuting the declared "
        "input/output feature axes with the inputs' features permutes the output's alike",
        check_permutation_invariance,
    ),
    Check("meta_device", "the block builds on the meta device without allocating", check_meta_device),
    Check("blueprint_round_trip", "a one-node blueprint builds, saves and loads with the same outputs", check_blueprint_round_trip),
    Check("torch_compile", "torch.compile(fullgraph=True) traces it and matches eager", check_torch_compile),
)
CHECK_NAMES = tuple(c.name for c in CHECKS)


@dataclass(frozen=True)
class CheckResult:
    check: str
    status: str
    """One of ``passed``, ``failed``, ``skipped``, ``xfailed`` (failed as expected), ``xpassed``."""
    detail: str = ""


@dataclass
class Report:
    block: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status not in ("failed", "xpassed") for r in self.results)

    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status in ("failed", "xpassed")]


def run_check(check: Check, case: BlockCase, expected_failure: str | None = None) -> CheckResult:
    """Run one check; exceptions other than AssertionError are failures with their traceback tail."""
    try:
        with torch.random.fork_rng(), contextlib.redirect_stderr(io.StringIO()):
            check.run(case)
    except SkipCheck as exc:
        return CheckResult(check.name, "skipped", str(exc))
    except AssertionError as exc:
        status = "xfailed" if expected_failure else "failed"
        return CheckResult(check.name, status, str(exc) if not expected_failure else f"{expected_failure} ({exc})")
    except Exception as exc:
        detail = f"raised {type(exc).__name__}: {exc}{_origin(exc)}"
        return CheckResult(check.name, "xfailed" if expected_failure else "failed", detail)
    if expected_failure:
        return CheckResult(check.name, "xpassed", f"listed as an expected failure ({expected_failure}) but passed")
    return CheckResult(check.name, "passed")


def _origin(exc: BaseException) -> str:
    """Where the block's own code raised: the deepest frame outside torch and this kit."""
    torch_dir, kit = Path(torch.__file__).parent, Path(__file__)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not Path(f.filename).is_relative_to(torch_dir) and Path(f.filename) != kit]
    return f" (at {frames[-1].filename}:{frames[-1].lineno}, in {frames[-1].name})" if frames else ""


def _checks(expected_failed_checks: Mapping[str, str] | None) -> Iterator[tuple[Check, str | None]]:
    expected = dict(expected_failed_checks or {})
    unknown = sorted(set(expected) - set(CHECK_NAMES))
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(unknown)} in expected_failed_checks (checks: {', '.join(CHECK_NAMES)})")
    for check in CHECKS:
        yield check, expected.get(check.name)


def check_block(
    block: str | BlockSpec,
    args: Mapping[str, Any] | None = None,
    *,
    expected_failed_checks: Mapping[str, str] | None = None,
    raise_on_failure: bool = True,
) -> Report:
    """Run every conformance check on ``block`` built with ``args``.

    Returns the :class:`Report`; raises :class:`ConformanceError` listing the failures when
    ``raise_on_failure`` (the default). ``expected_failed_checks`` maps check names to the
    reason each is known to fail."""
    case = make_case(block, args)
    report = Report(case.label, [run_check(check, case, reason) for check, reason in _checks(expected_failed_checks)])
    if raise_on_failure and not report.ok:
        lines = [f"  {r.check} ({r.status}): {r.detail}" for r in report.failures()]
        raise ConformanceError(f"{case.label} fails {len(lines)} conformance check(s):\n" + "\n".join(lines))
    return report


def block_cases(blocks: Iterable[Any]) -> list[BlockCase]:
    """Cases for names, specs or ``(name, args)`` pairs; a bare name or spec expands to its
    spec's ``examples`` (or its defaults when it declares none)."""
    cases = []
    for item in blocks:
        if isinstance(item, tuple):
            cases.append(make_case(*item))
            continue
        spec = _lookup(item)
        cases.extend(make_case(spec, example) for example in (spec.examples or ({},)))
    return cases


def parametrize_block_checks(blocks: Iterable[Any], *, expected_failed_checks: Callable[[BlockCase], Mapping[str, str]] | Mapping[str, str] | None = None):
    """A ``pytest.mark.parametrize`` over every (block, check) pair, one test each.

    ``blocks``: names, specs, or ``(name, args)`` pairs. The test receives a callable that
    runs the check: a skip becomes ``pytest.skip``, an expected failure a strict ``xfail``::

        @parametrize_block_checks(["mix.my_mixer", ("mix.my_mixer", {"heads": 2})])
        def test_conformance(block_check):
            block_check()
    """
    import pytest

    params = []
    for case in block_cases(blocks):
        expected = expected_failed_checks(case) if callable(expected_failed_checks) else (expected_failed_checks or {})
        for check, reason in _checks(expected):
            marks = [pytest.mark.xfail(strict=True, reason=reason, raises=AssertionError)] if reason else []
            params.append(pytest.param(_PytestCheck(check, case), id=f"{case.label}-{check.name}", marks=marks))
    return pytest.mark.parametrize("block_check", params)


@dataclass(frozen=True)
class _PytestCheck:
    check: Check
    case: BlockCase

    def __call__(self) -> None:
        import pytest

        result = run_check(self.check, self.case)
        if result.status == "skipped":
            pytest.skip(result.detail)
        if result.status == "failed":
            raise AssertionError(f"{self.case.label}: {self.check.name}: {result.detail}")
