"""Testing tools for ssmgraph and its plugins: the block conformance kit and references."""

from ssmgraph.testing.conformance import (
    CHECK_NAMES,
    BlockCase,
    ConformanceError,
    Report,
    check_block,
    make_case,
    parametrize_block_checks,
)

__all__ = ["CHECK_NAMES", "BlockCase", "ConformanceError", "Report", "check_block", "make_case", "parametrize_block_checks"]
