"""Time and memory against sequence length: attention (quadratic) against Mamba, Mamba-2, S4D,
mLSTM, GLA, DeltaNet, Gated DeltaNet (linear) and Hyena (n log n).

Each mixer alone at width D (default 256), batch 1, lengths 256 to 16,384 (doubling):
forward+backward and forward seconds (best of the repeats), and the peak memory of one
forward+backward, measured in a fresh process. A log-log plot shows both against the
length with slope-1 and slope-2 guides; the fitted slope of each curve over the longer half
of the lengths is in the table (1: linear, 2: quadratic). Mixers that step also get the time
of one generated token after a prompt of that length ("step ms": flat for a recurrent state,
growing for a KV cache or Hyena's input cache) and its slope.

    python -m benchmarks.bench_scaling [--mixers mix.attention,mix.mamba,mix.mamba2,mix.s4d,mix.mlstm,mix.hyena] [--max-len 16384] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_mixers import build_mixer
from benchmarks.common import in_fresh_process, step_peak_mib, time_call, write_results


def lengths(max_len: int, min_len: int = 256) -> list[int]:
    out = [min_len]
    while out[-1] * 2 <= max_len:
        out.append(out[-1] * 2)
    return out


def fwd_bwd(module: torch.nn.Module, x: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    module(x).square().mean().backward()


def step_ms(module: torch.nn.Module, x: torch.Tensor, tokens: int = 8) -> float | None:
    """Milliseconds per generated token after the prompt ``x`` (None: the mixer does not step)."""
    if not hasattr(module, "step"):
        return None
    with torch.no_grad():
        _, state = module(x, return_state=True)
        x_t = x[:, -1]

        def generate() -> None:
            s = state
            for _ in range(tokens):
                _, s = module.step(x_t, s)

        return 1000 * min(time_call(generate, warmup=1, repeats=3)) / tokens


def _memory_worker(name: str, dim: int, length: int, device: str) -> float:
    torch.manual_seed(0)
    module = build_mixer(name, dim).to(device)
    x = torch.randn(1, length, dim, device=device, requires_grad=True)
    return step_peak_mib(lambda: fwd_bwd(module, x), device)


def slope(xs: list[int], ys: list[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.ticker

    from ssmgraph.merge.plots import pyplot

    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in (
        (axes[0], "fwd+bwd s", "forward+backward time (s)"),
        (axes[1], "peak MiB", "peak memory of fwd+bwd (MiB)"),
    ):
        for mixer in dict.fromkeys(r["mixer"] for r in rows):
            points = [(r["length"], r[key]) for r in rows if r["mixer"] == mixer and r.get(key)]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=mixer)
        xs = [r["length"] for r in rows if r["mixer"] == rows[0]["mixer"]]
        anchor = min(r[key] for r in rows if r.get(key))
        for power, style in ((1, ":"), (2, "--")):
            ax.plot(xs, [anchor * (x / xs[0]) ** power for x in xs], style, color="grey", label=f"∝ L^{power}")
        ax.set(xscale="log", yscale="log", xlabel="sequence length L", ylabel=label)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(xs, [f"{x // 1024}k" if x >= 1024 else str(x) for x in xs])
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("Scaling with sequence length (batch 1, one mixer)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mixers",
        default="mix.attention,mix.mamba,mix.mamba2,mix.s4d,mix.mlstm,mix.hyena,mix.gla,mix.deltanet,mix.gated_deltanet",
    )
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--max-len", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for name in args.mixers.split(","):
        torch.manual_seed(0)
        module = build_mixer(name, args.dim).to(args.device)
        for length in lengths(args.max_len):
            x = torch.randn(1, length, args.dim, device=args.device, requires_grad=True)
            repeats = args.repeats if length <= 4096 else 1

            def forward(x: torch.Tensor = x, module: torch.nn.Module = module) -> None:
                with torch.no_grad():
                    module(x)

            train = min(time_call(lambda x=x, module=module: fwd_bwd(module, x), warmup=1, repeats=repeats))
            fwd = min(time_call(forward, warmup=1, repeats=repeats))
            memory = in_fresh_process(_memory_worker, name, args.dim, length, args.device)
            row = {"mixer": name, "length": length, "fwd+bwd s": train, "fwd s": fwd, "peak MiB": round(memory, 1)}
            if (ms := step_ms(module, x.detach())) is not None:
                row["step ms"] = round(ms, 3)
            rows.append(row)
            print(row, flush=True)
    suffix = "_cuda" if args.device == "cuda" else ""
    summary = []
    for name in args.mixers.split(","):
        mine = [r for r in rows if r["mixer"] == name]
        tail = mine[min(len(mine) // 2, len(mine) - 2) :]  # the longer half, two points at least
        summary.append(
            {
                "mixer": name,
                "time slope": round(slope([r["length"] for r in tail], [r["fwd+bwd s"] for r in tail]), 2),
                "memory slope": round(slope([r["length"] for r in tail], [max(r["peak MiB"], 1e-3) for r in tail]), 2),
                f"fwd+bwd s at {mine[-1]['length']}": mine[-1]["fwd+bwd s"],
                f"peak MiB at {mine[-1]['length']}": mine[-1]["peak MiB"],
            }
        )
        if all("step ms" in r for r in tail):
            summary[-1]["step slope"] = round(slope([r["length"] for r in tail], [r["step ms"] for r in tail]), 2)
    write_results(f"scaling{suffix}", rows, args.out)
    write_results(f"scaling_slopes{suffix}", summary, args.out)
    if args.out is not None:
        plot(rows, args.out / f"scaling{suffix}.png")


if __name__ == "__main__":
    main()
