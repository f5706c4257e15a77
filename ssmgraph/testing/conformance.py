"""The block conformance kit: does a block keep the contract of docs/plugins.md?

In the spirit of scikit-learn's ``check_estimator``: one function runs every check that
applies to a configured block, chosen by the capabilities its spec declares, and a pytest
helper (:mod:`ssmgraph.testing.pytest_checks`) turns the same checks into one test each.
Plugin authors run it on their blocks; our own suite runs it on every built-in block.

    from ssmgraph.testing import check_block
    report = check_block("mix.s4d", args={"bidirectional": True})   # raises on failure

A check passes (with a note of what it covered, where that varies), fails (an
``AssertionError`` with a readable message), or is skipped with the reason it does not
apply. Checks known to fail are listed in ``expected_failed_checks`` (name → reason): they
are reported as expected failures, and a listed check that passes is an error, so the list
never goes stale. The checks themselves live by what they look at: the spec
(:mod:`~ssmgraph.testing.declaration`), what the block computes
(:mod:`~ssmgraph.testing.behaviour`), its permutation spaces
(:mod:`~ssmgraph.testing.permutations`) and how it travels (:mod:`~ssmgraph.testing.portability`).
"""

from __future__ import annotations

import contextlib
import io
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssmgraph.registry.specs import BlockSpec
from ssmgraph.testing.asserts import SkipCheck
from ssmgraph.testing.behaviour import (
    check_causality,
    check_gradients,
    check_mask,
    check_shapes_and_dtypes,
    check_state_carry,
    check_step_equals_forward,
)
from ssmgraph.testing.cases import BlockCase, make_case
from ssmgraph.testing.declaration import check_documented, check_spec
from ssmgraph.testing.permutations import check_permutation_invariance
from ssmgraph.testing.portability import (
    check_blueprint_round_trip,
    check_meta_device,
    check_state_dict_round_trip,
    check_torch_compile,
)

_PACKAGE = Path(__file__).resolve().parents[1]
_BLOCK_CODE = (_PACKAGE / "blocks", _PACKAGE / "ops")
"""ssmgraph's own block code: where a built-in block's failure is located (the rest of the
package is the machinery around a block, never the place to look)."""


class ConformanceError(AssertionError):
    """Raised by :func:`check_block` when a check fails (or an expected failure passes)."""


@dataclass(frozen=True)
class Check:
    name: str
    doc: str
    run: Callable[[BlockCase], str | None]
    """Raises AssertionError on failure, SkipCheck when it does not apply; may return a note."""


CHECKS: tuple[Check, ...] = (
    Check("spec", "the spec is well-formed (name, role, callables, parameters)", check_spec),
    Check("documented", "the block, its reference and every parameter are documented", check_documented),
    Check(
        "shapes_and_dtypes",
        "outputs have the shape rule's shape, the module's dtype (fp32, fp64), any length",
        check_shapes_and_dtypes,
    ),
    Check("gradients", "gradients reach every parameter and float input, finite and non-zero", check_gradients),
    Check(
        "causality", "causal blocks: no output sees a later input; pointwise blocks: none sees another position", check_causality
    ),
    Check(
        "step_equals_forward",
        "stepping equals forward, values and gradients (pointwise: length-1 slices)",
        check_step_equals_forward,
    ),
    Check(
        "state_carry",
        "mixers: the returned state equals the stepped one; chunks with the state carried equal one pass",
        check_state_carry,
    ),
    Check("mask", "mixers: right padding never changes valid outputs; the final state is the last valid token's", check_mask),
    Check(
        "state_dict_round_trip",
        "a state dict (through safetensors) reproduces the outputs in a fresh build",
        check_state_dict_round_trip,
    ),
    Check(
        "permutation_invariance",
        "permuting the units of every declared permutation space leaves the outputs unchanged; permuting the declared "
        "input/output feature axes with the inputs' features permutes the output's alike",
        check_permutation_invariance,
    ),
    Check("meta_device", "the block builds on the meta device without allocating", check_meta_device),
    Check(
        "blueprint_round_trip", "a one-node blueprint builds, saves and loads with the same outputs", check_blueprint_round_trip
    ),
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
            note = check.run(case)
    except SkipCheck as exc:
        return CheckResult(check.name, "skipped", str(exc))
    except AssertionError as exc:
        status = "xfailed" if expected_failure else "failed"
        return CheckResult(check.name, status, str(exc) if not expected_failure else f"{expected_failure} ({exc})")
    except Exception as exc:  # noqa: BLE001 - a block's own error is the check's failure
        detail = f"raised {type(exc).__name__}: {exc}{_origin(exc)}"
        return CheckResult(check.name, "xfailed" if expected_failure else "failed", detail)
    if expected_failure:
        return CheckResult(check.name, "xpassed", f"listed as an expected failure ({expected_failure}) but passed")
    return CheckResult(check.name, "passed", note or "")


def _origin(exc: BaseException) -> str:
    """Where the block's own code raised: the deepest frame of the exception (and of those it
    was raised from) outside torch and outside ssmgraph's machinery (errors.py, the compiler,
    this kit); built-in blocks and ops count as block code."""
    torch_dir = Path(torch.__file__).parent

    def blocks_own(filename: str) -> bool:
        path = Path(filename)
        if path.is_relative_to(torch_dir):
            return False
        return not path.is_relative_to(_PACKAGE) or any(path.is_relative_to(d) for d in _BLOCK_CODE)

    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    frames = [f for e in chain for f in traceback.extract_tb(e.__traceback__) if blocks_own(f.filename)]
    return f" (at {frames[-1].filename}:{frames[-1].lineno}, in {frames[-1].name})" if frames else ""


def expected_checks(expected_failed_checks: Mapping[str, str] | None) -> Iterator[tuple[Check, str | None]]:
    """Every check with the reason it is expected to fail (None: it must pass)."""
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
    report = Report(case.label, [run_check(check, case, reason) for check, reason in expected_checks(expected_failed_checks)])
    if raise_on_failure and not report.ok:
        lines = [f"  {r.check} ({r.status}): {r.detail}" for r in report.failures()]
        raise ConformanceError(f"{case.label} fails {len(lines)} conformance check(s):\n" + "\n".join(lines))
    return report
