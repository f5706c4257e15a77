"""ssmgraph/progress.py: phases said as the caller chose — plain lines (throttled), rich bars, or nothing."""

from __future__ import annotations

import io

import pytest

from ssmgraph import progress


def test_lines_say_each_phase_start_end_and_at_most_every_few_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(0, 1000, 2))  # every call to the clock is 2 s later
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    with progress.reporting("lines", out, every=5.0):
        with progress.phase("planning"):
            pass
        with progress.phase("merging", total=6, unit="tensors"):
            for _ in range(6):
                progress.advance()  # the innermost phase, from however deep
        progress.advance()  # outside every phase: nothing
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["planning ...", "planning done in 2.0 s"]
    assert lines[2] == "merging 0/6 tensors"
    assert lines[3:-1] == ["merging 3/6 tensors"]  # 6 s after the start; the next would be at 6/6, said once, at the end
    assert lines[-1].startswith("merging 6/6 tensors in ")


def test_off_and_no_reporter_say_nothing_and_an_error_ends_no_phase() -> None:
    out = io.StringIO()
    with progress.phase("merging", total=3) as step:
        step(1)
    with progress.reporting("off", out), progress.phase("merging", total=3):
        progress.advance()
    with pytest.raises(RuntimeError), progress.reporting("lines", out), progress.phase("merging", total=3):
        raise RuntimeError("stop")
    assert out.getvalue() == "merging 0/3\n"
    with pytest.raises(ValueError, match="progress mode 'bars'"), progress.reporting("bars"):
        pass


def test_rich_draws_a_bar_per_phase() -> None:
    out = io.StringIO()
    with progress.reporting("rich", out), progress.phase("merging", total=4, unit="tensors"):
        for _ in range(4):
            progress.advance()
    assert "merging" in out.getvalue() and "4/4" in out.getvalue()
