"""The benchmark scripts run end to end at toy sizes and write well-formed results.

Nothing here is timed or compared: the numbers are the scripts' business (docs/performance.md).
What is checked is that each script still runs against the current code — its models build,
its equality checks pass, its rows carry the columns the docs read — so that a benchmark does
not rot between the runs that refresh its tables.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(module: str, out: Path, *args: str) -> None:
    """``python -m benchmarks.<module> ... --out out`` from the repository root, on the CPU."""
    command = [sys.executable, "-m", f"benchmarks.{module}", *args, "--out", str(out)]
    done = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command[1:])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


def rows(out: Path, name: str) -> list[dict[str, Any]]:
    data = json.loads((out / f"{name}.json").read_text())
    assert data["env"]["device"] in ("cpu", "cuda") and data["env"]["torch"]
    assert str(ROOT) not in json.dumps(data), "no machine path in a results file"
    return data["rows"]


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_overhead(tmp_path: Path) -> None:
    run_benchmark(
        "bench_overhead",
        tmp_path,
        "--batch",
        "2",
        "--seq",
        "16",
        "--d-model",
        "32",
        "--layers",
        "1",
        "--heads",
        "2",
        "--rounds",
        "1",
        "--device",
        "cpu",
    )
    table = rows(tmp_path, "overhead")
    assert [r["mode"] for r in table] == ["forward+backward", "forward"]
    assert all(positive(r["ssmgraph s"]) and positive(r["hand-written s"]) and math.isfinite(r["overhead %"]) for r in table)


def test_bench_mixers(tmp_path: Path) -> None:
    run_benchmark(
        "bench_mixers",
        tmp_path,
        "--mixers",
        "mix.attention,mix.s4d",
        "--batch",
        "2",
        "--seq",
        "32",
        "--dim",
        "16",
        "--gen-steps",
        "2",
        "--repeats",
        "1",
        "--device",
        "cpu",
    )
    table = rows(tmp_path, "mixers")
    assert [r["mixer"] for r in table] == ["mix.attention", "mix.s4d"]
    assert all(positive(r[key]) for r in table for key in ("params", "fwd+bwd tokens/s", "fwd tokens/s", "gen tokens/s"))


def test_bench_scaling_writes_rows_slopes_and_the_plot(tmp_path: Path) -> None:
    run_benchmark(
        "bench_scaling", tmp_path, "--mixers", "mix.s4d", "--dim", "16", "--max-len", "512", "--repeats", "1", "--device", "cpu"
    )
    assert [r["length"] for r in rows(tmp_path, "scaling")] == [256, 512]
    (summary,) = rows(tmp_path, "scaling_slopes")
    assert math.isfinite(summary["time slope"]) and math.isfinite(summary["memory slope"])
    assert (tmp_path / "scaling.png").stat().st_size > 0


def test_bench_hf_against_transformers(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    sizes = ("--lengths", "16", "--batch", "2", "--rounds", "1", "--new-tokens", "2", "--gen-rounds", "1")
    run_benchmark("bench_hf", tmp_path, *sizes, "--context-short", "4", "--context-long", "8", "--no-memory", "--device", "cpu")
    speed = rows(tmp_path, "hf_speed")
    assert [r["model"] for r in speed] == ["gpt2", "llama", "mamba"]
    assert all(positive(r["train ×"]) and positive(r["fwd ×"]) for r in speed)
    generation = rows(tmp_path, "hf_generation")
    assert [(r["model"], r["context"]) for r in generation] == [(f, c) for f in ("gpt2", "llama", "mamba") for c in (4, 8)]
    assert all(math.isfinite(r["gen ×"]) for r in generation)


@pytest.mark.slow  # full-size GPT-2, Llama and Mamba training steps: ~15 s
def test_bench_linear(tmp_path: Path) -> None:
    import ssmgraph.ops.linear as fast

    if fast._ONEDNN_LINEAR is None:
        pytest.skip("PyTorch built without oneDNN's linear op")
    run_benchmark("bench_linear", tmp_path, "--rounds", "1")
    table = rows(tmp_path, "linear_onednn")
    assert len(table) == 11 and all(positive(r["speed-up ×"]) for r in table)  # 4 shapes × 2 modes, 3 models
