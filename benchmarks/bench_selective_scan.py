"""Time the selective-scan variants of ssmgraph/ops/selective_scan.py on this CPU.

    python benchmarks/bench_selective_scan.py            # the table in docs/blocks/mamba.md
    python benchmarks/bench_selective_scan.py --sweep    # also the crossover sweeps
    python benchmarks/bench_selective_scan.py --threads 1

Run it on an otherwise idle machine: with another busy process on 2 cores, 2-thread torch
ops become up to 60x slower (an OpenMP thread waits for the core the other process holds),
while --threads 1 stays within ~1.5x.

Variants (all fp32, Mamba-like inputs: A = -(1..N), softplus(Δ) in about [1e-3, 1e-1]):
  ref          selective_scan_ref: autograd through a loop over unbind-ed steps, exp(ΔA)
               and ΔuB materialised for the whole sequence
  blelloch-ag  autograd through the out-of-place Blelloch scan of the whole sequence
  loop         selective_scan(method="loop"): custom backward, chunked recompute
  blelloch     selective_scan(method="blelloch"): custom backward, Blelloch inside
Per shape, one fresh process times all variants interleaved (best over 5-200 rounds after a
warm-up, see time_worker); the peak RSS growth of one forward+backward ("mem", MB) is
measured in a fresh process per variant.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

VARIANTS = ("ref", "blelloch-ag", "loop", "blelloch")
TABLE = [
    (8, 1024, 512, 16),
    (8, 64, 512, 16),
    (8, 16, 512, 16),
    (4, 1024, 128, 16),
    (1, 1024, 64, 16),
    (2, 256, 32, 16),
    (1, 4096, 32, 16),
]
SWEEP_SLICE = [(1, 1024, d, 16) for d in (16, 32, 64, 128, 256, 512)] + [(2, 1024, 512, 16)]
SWEEP_LEN = [(1, length, 16, 16) for length in (4, 8, 16, 32, 64, 128, 256)]


def _inputs(b: int, length: int, d: int, n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(b, d, length, generator=g)
    lo, hi = math.log(1e-3), math.log(1e-1)
    dt = torch.exp(torch.rand(d, generator=g) * (hi - lo) + lo)  # Mamba's dt init
    delta = (dt + torch.log(-torch.expm1(-dt)))[:, None] + 0.5 * torch.randn(b, d, length, generator=g)
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)
    B = torch.randn(b, n, length, generator=g)
    C = torch.randn(b, n, length, generator=g)
    D = torch.ones(d)
    z = torch.randn(b, d, length, generator=g)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D, z)]


def _blelloch_autograd(u, delta, A, B, C, D, z):
    from ssmgraph.ops.selective_scan import _recurrence_blelloch

    delta = F.softplus(delta)
    a = torch.exp(delta.permute(2, 0, 1).unsqueeze(-1) * A)
    b = (delta * u).permute(2, 0, 1).unsqueeze(-1) * B.permute(2, 0, 1).unsqueeze(-2)
    h = _recurrence_blelloch(a[1:], b)
    y = torch.einsum("lbdn,bnl->bdl", h, C)
    return (y + u * D[:, None]) * F.silu(z)


def _fn(variant: str):
    from ssmgraph.ops.selective_scan import selective_scan, selective_scan_ref

    if variant == "ref":
        return lambda *xs: selective_scan_ref(*xs, delta_softplus=True)
    if variant == "blelloch-ag":
        return _blelloch_autograd
    return lambda *xs: selective_scan(*xs, delta_softplus=True, method=variant)


MIN_ROUNDS, MAX_ROUNDS, BUDGET_S = 5, 200, 2.0


def _calls(fn, xs):
    def fwd() -> None:
        with torch.no_grad():
            fn(*xs)

    def fwd_bwd() -> None:
        fn(*xs).sum().backward()

    return {"fwd": fwd, "fwd_bwd": fwd_bwd}


def time_worker(variants: list[str], shape: tuple[int, int, int, int]) -> dict:
    """Best time of each (variant, fwd | fwd_bwd), the variants interleaved round by round.

    Rounds continue (at least MIN_ROUNDS, at most MAX_ROUNDS) while under BUDGET_S seconds per
    variant. Interleaving gives every variant the same chance at the quiet moments of a shared
    machine, and the minimum filters out the large slowdowns other processes cause on 2 cores
    (an OpenMP thread waiting for a busy core)."""
    xs = _inputs(*shape)
    calls = {(v, k): c for v in variants for k, c in _calls(_fn(v), xs).items()}
    for c in calls.values():
        c()  # warm-up
    times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    rounds, spent = 0, 0.0
    while rounds < MIN_ROUNDS or (spent < BUDGET_S * len(variants) and rounds < MAX_ROUNDS):
        for key, c in calls.items():
            t0 = time.perf_counter()
            c()
            dt = time.perf_counter() - t0
            times[key].append(dt)
            spent += dt
        rounds += 1
    return {f"{v}:{k}": min(t) for (v, k), t in times.items()} | {"rounds": rounds}


def mem_worker(variant: str, shape: tuple[int, int, int, int]) -> float:
    """Peak RSS growth (MB) over the inputs of one forward+backward, in a fresh process."""
    xs = _inputs(*shape)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _calls(_fn(variant), xs)["fwd_bwd"]()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024


def _sub(*args: str) -> str:
    threads = ["--threads", str(torch.get_num_threads())]
    return subprocess.run([sys.executable, __file__, *threads, *args], capture_output=True, text=True, check=True).stdout


def run(shapes: list[tuple[int, int, int, int]], variants: tuple[str, ...]) -> None:
    from ssmgraph.ops.selective_scan import pick_method

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; seconds, best over "
        f"{MIN_ROUNDS}-{MAX_ROUNDS} interleaved rounds; fwd is no_grad; mem = peak RSS growth of fwd+bwd"
    )
    head = "| B·L·d·N | slice | " + " | ".join(f"{v} fwd / fwd+bwd (mem MB)" for v in variants) + " | auto |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for shape in shapes:
        dims = [str(x) for x in shape]
        # the reference materialises (B, d, L, N) several times: skip it where that is > 2 GB
        run_v = [v for v in variants if not (v == "ref" and shape[0] * shape[1] * shape[2] * shape[3] > 1 << 27)]
        t = json.loads(_sub("--time-worker", ",".join(run_v), *dims))
        cells = []
        for v in variants:
            if v not in run_v:
                cells.append("skipped")
                continue
            mem = float(_sub("--mem-worker", v, *dims))
            cells.append(f"{t[v + ':fwd']:.4f} / {t[v + ':fwd_bwd']:.4f} ({mem:.0f})")
        b, length, d, n = shape
        row = f"| {b}·{length}·{d}·{n} | {b * d * n} | " + " | ".join(cells)
        print(row + f" | {pick_method(b, d, n, length)} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sweep", action="store_true", help="also run the slice-size and length sweeps")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")
    p.add_argument("--time-worker", nargs=5, metavar=("VARIANTS", "B", "L", "D", "N"), help=argparse.SUPPRESS)
    p.add_argument("--mem-worker", nargs=5, metavar=("VARIANT", "B", "L", "D", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.time_worker:
        variants, *dims = args.time_worker
        print(json.dumps(time_worker(variants.split(","), tuple(int(x) for x in dims))))
        return
    if args.mem_worker:
        variant, *dims = args.mem_worker
        print(mem_worker(variant, tuple(int(x) for x in dims)))
        return
    run(TABLE, VARIANTS)
    if args.sweep:
        print("\nslice-size sweep at L=1024")
        run(SWEEP_SLICE, ("loop", "blelloch"))
        print("\nlength sweep at slice 256")
        run(SWEEP_LEN, ("loop", "blelloch"))


if __name__ == "__main__":
    main()
