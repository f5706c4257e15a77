"""The catalogue of error codes: every code is mentioned in a test (anywhere under tests/) and has
a row in docs/errors.md.
"""

from __future__ import annotations

import re
from pathlib import Path

from ssmgraph.errors import ERROR_CODES

REPO = Path(__file__).resolve().parents[2]


# ---- meta: every code is tested and documented -------------------------------------------------------------


def _test_sources() -> str:
    here = Path(__file__).resolve()
    return (
        "\n".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "tests").rglob("*.py")) if p.resolve() != here)
        + "\n"
        + here.read_text(encoding="utf-8")
    )


def test_every_error_code_is_mentioned_in_a_test() -> None:
    sources = _test_sources()
    used = set(re.findall(r"\bE\d{3}\b", sources))
    missing = [code for code in ERROR_CODES if code not in used]
    assert not missing, f"error codes no test mentions: {missing}"


def test_every_error_code_is_documented() -> None:
    doc = (REPO / "docs" / "errors.md").read_text(encoding="utf-8")
    missing = [code for code in ERROR_CODES if not re.search(rf"^\|\s*{code}\s*\|", doc, re.MULTILINE)]
    assert not missing, f"error codes without a row in docs/errors.md: {missing}"
    # and every documented code exists
    documented = set(re.findall(r"^\|\s*(E\d{3})\s*\|", doc, re.MULTILINE))
    assert documented <= set(ERROR_CODES), documented - set(ERROR_CODES)
