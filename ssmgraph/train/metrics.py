"""Training metrics: JSON lines in the run directory (and TensorBoard when installed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ssmgraph.serialization import write_text_atomic

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends one JSON object per record to RUN/metrics.jsonl; a no-op on non-main ranks."""

    def __init__(self, run_dir: Path, *, enabled: bool = True):
        self.path = run_dir / METRICS_FILE
        self.enabled = enabled
        self.handle: Any = None
        self.tensorboard: Any = None

    def __enter__(self) -> MetricsLog:
        if self.enabled:
            self.handle = open(self.path, "a", encoding="utf-8")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(self.path.parent / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.tensorboard = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        if self.tensorboard is not None:
            self.tensorboard.close()

    def write(self, record: dict[str, Any]) -> None:
        if self.handle is None:
            return
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, float):
                    self.tensorboard.add_scalar(f"{record['split']}/{key}", value, record["step"])

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run logs those steps again)."""
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
    """The file's records, skipping lines that are not one (a kill mid-append leaves half a line)."""
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and "split" in record:
            records.append(record)
    return records
