"""Training metrics: JSON lines in the run directory, and the loggers the config names (ssmgraph.train.loggers)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssmgraph.folders import write_text_atomic
from ssmgraph.safeio import JSONRefused, fits, parse_json

if TYPE_CHECKING:
    from typing_extensions import Self

    from ssmgraph.train.loggers import Logger

METRICS_FILE = "metrics.jsonl"
MAX_LINE = 1 << 16


class MetricsLog:
    """Appends one JSON object per record to RUN/metrics.jsonl and hands it to the loggers opened
    by ``open_loggers`` (called with the step the run starts from); a no-op on non-main ranks."""

    def __init__(self, run_dir: Path, *, enabled: bool = True, open_loggers: Callable[[int], list[Logger]] | None = None):
        self.path = run_dir / METRICS_FILE
        self.enabled = enabled
        self.handle: Any = None
        self.open_loggers = open_loggers
        self.loggers: list[Logger] = []
        self.start = 0

    def __enter__(self) -> Self:
        if self.enabled:
            self.loggers = self.open_loggers(self.start) if self.open_loggers else []
            self.handle = open(self.path, "a", encoding="utf-8")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        for logger in self.loggers:
            logger.close()
        self.loggers = []

    def write(self, record: dict[str, Any]) -> None:
        if self.handle is None:
            return
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        for logger in self.loggers:
            logger.log(record)

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run logs those steps again)."""
        self.start = step
        if not self.enabled or not self.path.is_file():
            return
        kept = [record for record in parse_records(self.path) if record["step"] <= step]
        write_text_atomic(self.path, "".join(json.dumps(record) + "\n" for record in kept))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return parse_records(path)


def parse_records(path: Path) -> list[dict[str, Any]]:
    """The file's records, skipping lines that are not one: a kill mid-append leaves half a line,
    and a line too long, too deeply nested or not of numbers is treated as damaged the same way."""
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if len(line) > MAX_LINE:
            continue
        try:
            record = parse_json(line, max_depth=1, finite=False)
        except JSONRefused:
            continue
        if _is_record(record):
            records.append(record)
    return records


def _is_record(record: Any) -> bool:
    """What :meth:`MetricsLog.write` writes: an integer step, a split name, numbers."""
    if not isinstance(record, dict) or not fits(record.get("step"), int) or not isinstance(record.get("split"), str):
        return False
    return all(fits(value, float) for key, value in record.items() if key != "split")
