"""Loss and accuracy curves of a run, as PNG files."""

from __future__ import annotations

from pathlib import Path

from ssmgraph.errors import SsmgraphError
from ssmgraph.train.metrics import read_metrics


def plot_run(run_dir: Path, out_dir: Path) -> list[Path]:
    """Write loss.png and accuracy.png (train and held-out curves) into ``out_dir``."""
    import matplotlib  # slow to import: only `ssmgraph plot` pays for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    if not records:
        raise SsmgraphError(f"{run_dir}: no metrics.jsonl to plot (is it a training run?)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # --out names a file, or a path through one
        raise SsmgraphError(f"cannot make the folder {out_dir} for the PNGs ({exc.strerror}); give another --out") from None
    written = []
    for metric, label in (("loss", "loss"), ("accuracy", "accuracy")):
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
        for split, style in (("train", "-"), ("eval", "o-")):
            points = [(r["step"], r[metric]) for r in records if r["split"] == split and metric in r]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, style, label="held-out" if split == "eval" else split, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_title(f"{run_dir.name}: {label}")
        if metric == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{metric}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
