"""The merge report: ``report.json`` (every figure) and ``report.md`` (tables and plots)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ssmgraph.merge.compatibility import Compatibility
from ssmgraph.merge.context import MergeResult


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def strict_json(value: Any) -> Any:
    """``value`` with NaN and ±inf as null: strict JSON, which bare ``NaN`` is not."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_report(folder: Path, summary: dict[str, Any], result: MergeResult) -> None:
    report = strict_json({**summary, "metrics": result.metrics, "notes": result.notes})
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str, allow_nan=False), encoding="utf-8")
    parts = [
        f"# Merge report: {summary['method']}",
        "",
        (
            f"Models: {', '.join(f'`{k}` ({v})' for k, v in summary['models'].items())}. "
            f"Compatibility: **{Compatibility(summary['compatibility']).label}** ({summary['compatibility_reason']})."
        ),
        f"Parameters: `{json.dumps(summary['parameters'], default=str)}`"
        + (f"; permutation alignment first: `{json.dumps(summary['alignment'])}`" if summary.get("alignment") else "")
        + f". Took {summary['seconds']} s.",
    ]
    for title, header, rows in result.tables:
        parts += ["", f"## {title}", "", markdown_table(header, rows)]
    if result.plots:
        parts += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in result.plots]
    if result.notes:
        parts += ["", "## Notes", ""] + [f"- {note}" for note in result.notes]
    (folder / "report.md").write_text("\n".join(parts) + "\n", encoding="utf-8")
