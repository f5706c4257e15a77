"""Figures of merge reports (matplotlib, off-screen), written as PNG files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


def pyplot() -> Any:
    """matplotlib's pyplot on the off-screen Agg backend; imported here, when a plot is drawn,
    because importing matplotlib costs every command that draws nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(
    values: torch.Tensor,
    rows: Sequence[str],
    cols: Sequence[str],
    title: str,
    path: Path,
    label: str = "",
    *,
    limits: tuple[float, float] | None = (0.0, 1.0),
) -> Path:
    """A labelled heatmap of ``values`` (rows × cols), annotated when small enough to read; the
    colour scale spans ``limits`` (None: the finite values' range, for losses and bits)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * len(cols), 1.0 + 0.45 * len(rows)), dpi=120)
    if limits is None:
        finite = values[torch.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
        limits = (low, high if high > low else low + 1.0)
    image = ax.imshow(values.numpy(), vmin=limits[0], vmax=limits[1], cmap="viridis")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    if values.numel() <= 400:
        for (i, j), v in zip(((i, j) for i in range(len(rows)) for j in range(len(cols))), values.flatten().tolist()):
            dark = (v - limits[0]) / (limits[1] - limits[0]) < 0.6
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label=label)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def curves(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str,
    path: Path,
    *,
    log_y: bool = False,
) -> Path:
    """Several named (x, y) curves on one axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.6), dpi=120)
    for name, (x, y) in series.items():
        ax.plot(list(x), list(y), "o-", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def loss_terms(log: Sequence[Mapping[str, float]], title: str, path: Path) -> Path:
    """Each logged loss term of a training run (every key but ``step`` and the total ``loss``)
    against the step, on a log scale (``mutual``, ``distill``)."""
    steps = [r["step"] for r in log]
    series = {key: (steps, [r[key] for r in log]) for key in sorted(log[0]) if key not in ("step", "loss")}
    return curves(series, "step", "loss", title, path, log_y=True)
