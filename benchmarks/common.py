"""Helpers shared by the benchmarks: interleaved timing, medians, peak memory, a results table."""

from __future__ import annotations

import json
import multiprocessing
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _finished() -> None:
    """Wait for queued CUDA work, so that a timer stops when the GPU is done, not when the
    kernels are launched (nothing to wait for on the CPU)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any]) -> float:
    _finished()
    start = time.perf_counter()
    fn()
    _finished()
    return time.perf_counter() - start


def time_call(fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 5) -> list[float]:
    """Wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    return [_timed(fn) for _ in range(repeats)]


def interleaved(fns: dict[str, Callable[[], Any]], *, warmup: int = 2, rounds: int = 7) -> dict[str, float]:
    """Median seconds per candidate, timing them in alternation so drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(_timed(fn))
    return {name: statistics.median(values) for name, values in samples.items()}


def environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def write_results(name: str, rows: list[dict[str, Any]], out_dir: Path | None) -> None:
    """Print rows as a markdown table and, with ``out_dir``, save them as JSON."""
    if not rows:
        return
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{name}.json").write_text(json.dumps({"env": environment(), "rows": rows}, indent=2))


def step_peak_mib(fn: Callable[[], Any], device: str) -> float:
    """How far memory rises above its level before ``fn()`` at its peak during the call, MiB:
    allocated memory on CUDA; on CPU the resident set, whose high-water mark Linux resets
    through /proc/self/clear_refs (run it in a fresh process: see :func:`in_fresh_process`)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - base) / 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _call_into(queue: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    queue.put(fn(*args))


def in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a new (spawned) Python process, so that nothing this process allocated
    earlier, nor the allocator's cached blocks, shows in the memory it measures."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_call_into, args=(queue, fn, args))
    process.start()
    value = queue.get()
    process.join()
    return value
