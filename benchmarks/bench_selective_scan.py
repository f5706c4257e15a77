"""Time the selective-scan variants of ssmgraph/blocks/selective_scan.py on this CPU.

    python benchmarks/bench_selective_scan.py            # the table in docs/blocks/mamba.md
    python benchmarks/bench_selective_scan.py --sweep    # also the crossover sweeps

Variants (all fp32, Mamba-like inputs: A = -(1..N), softplus(Δ) in about [1e-3, 1e-1]):
  ref          selective_scan_ref: autograd through a loop over unbind-ed steps, exp(ΔA)
               and ΔuB materialised for the whole sequence
  blelloch-ag  autograd through the out-of-place Blelloch scan of the whole sequence
  loop         selective_scan(method="loop"): custom backward, chunked recompute
  blelloch     selective_scan(method="blelloch"): custom backward, Blelloch inside
Each (variant, shape) runs in a fresh process: the best of 5 to 200 calls (see _best) after
one warm-up, and the peak RSS growth over the inputs ("mem", MB) of the forward+backward.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

VARIANTS = ("ref", "blelloch-ag", "loop", "blelloch")
TABLE = [(8, 1024, 512, 16), (8, 64, 512, 16), (8, 16, 512, 16), (4, 1024, 128, 16), (1, 1024, 64, 16), (2, 256, 32, 16), (1, 4096, 32, 16)]
SWEEP_SLICE = [(1, 1024, d, 16) for d in (16, 32, 64, 128, 256, 512)] + [(2, 1024, 512, 16)]
SWEEP_LEN = [(2, length, 32, 16) for length in (2, 4, 8, 16, 32, 64)]


def _inputs(b: int, length: int, d: int, n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(b, d, length, generator=g)
    dt = torch.exp(torch.rand(d, generator=g) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3))) + torch.log(torch.tensor(1e-3)))
    delta = (dt + torch.log(-torch.expm1(-dt)))[:, None] + 0.5 * torch.randn(b, d, length, generator=g)
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)
    B = torch.randn(b, n, length, generator=g)
    C = torch.randn(b, n, length, generator=g)
    D = torch.ones(d)
    z = torch.randn(b, d, length, generator=g)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D, z)]


def _blelloch_autograd(u, delta, A, B, C, D, z):
    from ssmgraph.blocks.selective_scan import _recurrence_blelloch

    delta = F.softplus(delta)
    a = torch.exp(delta.permute(2, 0, 1).unsqueeze(-1) * A)
    b = (delta * u).permute(2, 0, 1).unsqueeze(-1) * B.permute(2, 0, 1).unsqueeze(-2)
    h = _recurrence_blelloch(a[1:], b)
    y = torch.einsum("lbdn,bnl->bdl", h, C)
    return (y + u * D[:, None]) * F.silu(z)


def _fn(variant: str):
    from ssmgraph.blocks.selective_scan import selective_scan, selective_scan_ref

    if variant == "ref":
        return lambda *xs: selective_scan_ref(*xs, delta_softplus=True)
    if variant == "blelloch-ag":
        return _blelloch_autograd
    return lambda *xs: selective_scan(*xs, delta_softplus=True, method=variant)


MIN_REPS, MAX_REPS, BUDGET_S = 5, 200, 1.0


def _best(fn) -> float:
    """Minimum over at least MIN_REPS timed calls (more, up to MAX_REPS, while under BUDGET_S).

    The minimum, over many calls for fast cases, filters out the large slowdowns that other
    processes on a 2-core machine cause (OpenMP threads waiting for a busy core)."""
    fn()
    times: list[float] = []
    while len(times) < MIN_REPS or (sum(times) < BUDGET_S and len(times) < MAX_REPS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def worker(variant: str, shape: tuple[int, int, int, int]) -> dict:
    xs = _inputs(*shape)
    fn = _fn(variant)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def fwd_bwd() -> None:
        fn(*xs).sum().backward()

    def fwd() -> None:
        with torch.no_grad():
            fn(*xs)

    t_fb = _best(fwd_bwd)
    mem = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return {"fwd": _best(fwd), "fwd_bwd": t_fb, "mem_mb": mem}


def run(shapes: list[tuple[int, int, int, int]], variants: tuple[str, ...]) -> None:
    from ssmgraph.blocks.selective_scan import pick_method

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; seconds (best of {MIN_REPS}-{MAX_REPS} calls), fwd is no_grad")
    head = "| B·L·d·N | slice | " + " | ".join(f"{v} fwd / fwd+bwd (mem MB)" for v in variants) + " | auto |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for shape in shapes:
        cells = []
        for v in variants:
            if v == "ref" and shape[1] * shape[0] * shape[2] * shape[3] > 1 << 27:
                cells.append("skipped")
                continue
            out = subprocess.run(
                [sys.executable, __file__, "--worker", v, *map(str, shape)], capture_output=True, text=True, check=True
            )
            r = json.loads(out.stdout)
            cells.append(f"{r['fwd']:.4f} / {r['fwd_bwd']:.4f} ({r['mem_mb']:.0f})")
        b, length, d, n = shape
        print(f"| {b}·{length}·{d}·{n} | {b * d * n} | " + " | ".join(cells) + f" | {pick_method(b, d, n, length)} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sweep", action="store_true", help="also run the slice-size and length sweeps")
    p.add_argument("--worker", nargs=5, metavar=("VARIANT", "B", "L", "D", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        variant, *dims = args.worker
        print(json.dumps(worker(variant, tuple(int(x) for x in dims))))
        return
    run(TABLE, VARIANTS)
    if args.sweep:
        print("\nslice-size sweep at L=1024")
        run(SWEEP_SLICE, ("loop", "blelloch"))
        print("\nlength sweep at slice 1024")
        run(SWEEP_LEN, ("loop", "blelloch"))


if __name__ == "__main__":
    main()
