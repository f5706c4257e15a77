"""The conformance checks as pytest tests: one test per (argument set, check)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ssmgraph.testing.cases import BlockCase, block_cases
from ssmgraph.testing.conformance import Check, expected_checks, run_check


def parametrize_block_checks(
    blocks: Iterable[Any], *, expected_failed_checks: Callable[[BlockCase], Mapping[str, str]] | Mapping[str, str] | None = None
) -> Any:
    """A ``pytest.mark.parametrize`` over every (block, check) pair, one test each, named by the
    argument set (``mix.my_mixer[heads=2]-causality``).

    ``blocks``: names, specs, or ``(name, args)`` pairs. The test receives a callable that
    runs the check: a skip becomes ``pytest.skip``, an expected failure a strict ``xfail``::

        @parametrize_block_checks(["mix.my_mixer", ("mix.my_mixer", {"heads": 2})])
        def test_conformance(block_check):
            block_check()
    """
    import pytest  # deferred: pytest is a test dependency, and ssmgraph.testing also serves `ssmgraph check`

    params = []
    for case in block_cases(blocks):
        expected = expected_failed_checks(case) if callable(expected_failed_checks) else (expected_failed_checks or {})
        for check, reason in expected_checks(expected):
            marks = [pytest.mark.xfail(strict=True, reason=reason, raises=AssertionError)] if reason else []
            params.append(pytest.param(_PytestCheck(check, case), id=f"{case.label}-{check.name}", marks=marks))
    return pytest.mark.parametrize("block_check", params)


@dataclass(frozen=True)
class _PytestCheck:
    check: Check
    case: BlockCase

    def __call__(self) -> None:
        import pytest  # deferred: see parametrize_block_checks

        result = run_check(self.check, self.case)
        if result.status == "skipped":
            pytest.skip(result.detail)
        if result.status == "failed":
            raise AssertionError(f"{self.case.label}: {self.check.name}: {result.detail}")
