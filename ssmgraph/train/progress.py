"""The progress bar of a training run (rich): loss, accuracy, held-out accuracy, tokens/s, ETA."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, start: int) -> Iterator[Any]:
    """Yield ``update(step, metrics)``; a no-op when not ``enabled``."""
    if not enabled:
        yield lambda step, metrics: None
        return
    columns = (
        TextColumn("[bold]train"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        handle = progress.add_task("train", total=total, completed=start, info="")

        def update(step: int, metrics: dict[str, float]) -> None:
            info = f"loss {metrics.get('loss', float('nan')):.3f} acc {metrics.get('accuracy', 0.0):.2f}"
            if "eval_accuracy" in metrics:
                info += f" held-out {metrics['eval_accuracy']:.2f}"
            info += f" {metrics.get('tokens_per_s', 0.0) / 1000:.1f}k tok/s"
            progress.update(handle, completed=step, info=info)

        yield update
