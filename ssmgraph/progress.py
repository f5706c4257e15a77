"""How far a long job is (a merge, an import, a comparison), said the way its caller chose.

The work says what it does — ``with phase("merging", total=291, unit="tensors"):`` then
:func:`advance` per tensor, however deep the loop — and never where that goes. The caller (the CLI) chooses with
``with reporting(mode):``: ``"rich"`` draws a bar per phase on a terminal; ``"lines"`` writes one
plain line when a phase starts (``merging 0/291 tensors``), one at most every ``every`` seconds
while it runs (``merging 120/291 tensors``) and one when it ends (``merging 291/291 tensors in
12.3 s``), for logs and pipes; ``"off"`` (the default, and what a library call gets) says nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

MODES = ("off", "rich", "lines")


@dataclass
class _Reporter:
    mode: str
    stream: TextIO
    every: float
    bars: Any = None  # rich.progress.Progress while mode is "rich"
    open: list[Callable[[int], None]] = field(default_factory=list)  # the phases' advance, innermost last


_CURRENT: contextvars.ContextVar[_Reporter | None] = contextvars.ContextVar("ssmgraph_progress", default=None)


@contextlib.contextmanager
def reporting(mode: str, stream: TextIO | None = None, every: float = 5.0) -> Iterator[None]:
    """Phases inside report as ``mode`` says, to ``stream`` (default: stderr)."""
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r}: expected one of {', '.join(MODES)}")
    reporter = _Reporter(mode, stream or sys.stderr, every)
    token = _CURRENT.set(reporter)
    try:
        if mode == "rich":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            columns = (TextColumn("[bold]{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=Console(file=reporter.stream), transient=False) as bars:
                reporter.bars = bars
                yield
        else:
            yield
    finally:
        _CURRENT.reset(token)


def advance(n: int = 1) -> None:
    """``n`` more steps of the innermost phase open (nothing when none is, or nothing is reported)."""
    reporter = _CURRENT.get()
    if reporter is not None and reporter.open:
        reporter.open[-1](n)


@contextlib.contextmanager
def phase(name: str, total: int | None = None, unit: str = "") -> Iterator[Callable[[int], None]]:
    """One phase of the job, of ``total`` steps (None: unknown), each done said by :func:`advance` (or
    by the function yielded)."""
    reporter = _CURRENT.get()
    if reporter is None or reporter.mode == "off":
        yield lambda n=1: None
        return
    with _opened(reporter, name, total, unit) as step:
        reporter.open.append(step)
        try:
            yield step
        finally:
            reporter.open.pop()


@contextlib.contextmanager
def _opened(reporter: _Reporter, name: str, total: int | None, unit: str) -> Iterator[Callable[[int], None]]:
    started = last = time.perf_counter()
    done = 0
    of = f"/{total}" if total is not None else ""
    what = f" {unit}" if unit else ""

    def line(text: str) -> None:
        print(text, file=reporter.stream, flush=True)

    if reporter.bars is not None:
        task = reporter.bars.add_task(name, total=total)

        def bar_step(n: int = 1) -> None:
            reporter.bars.advance(task, n)

        yield bar_step
        reporter.bars.update(task, completed=total if total is not None else done)
        return
    line(f"{name} 0{of}{what}" if total is not None else f"{name} ...")

    def advance_line(n: int = 1) -> None:
        nonlocal done, last
        done += n
        now = time.perf_counter()
        if now - last >= reporter.every and (total is None or done < total):
            last = now
            line(f"{name} {done}{of}{what}")

    yield advance_line
    seconds = time.perf_counter() - started
    line(f"{name} {done}{of}{what} in {seconds:.1f} s" if total is not None else f"{name} done in {seconds:.1f} s")
