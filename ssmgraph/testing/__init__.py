"""Testing tools for ssmgraph and its plugins: the block conformance kit and references."""

from ssmgraph.testing.cases import BlockCase, block_cases, make_case
from ssmgraph.testing.conformance import CHECK_NAMES, CHECKS, ConformanceError, Report, check_block, run_check
from ssmgraph.testing.pytest_checks import parametrize_block_checks

__all__ = [
    "CHECKS",
    "CHECK_NAMES",
    "BlockCase",
    "ConformanceError",
    "Report",
    "block_cases",
    "check_block",
    "make_case",
    "parametrize_block_checks",
    "run_check",
]
