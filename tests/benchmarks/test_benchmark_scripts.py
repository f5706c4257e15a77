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
    assert [r["model"] for r in speed] == ["gpt2", "llama", "mamba", "mamba2"]
    assert all(positive(r["train ×"]) and positive(r["fwd ×"]) for r in speed)
    generation = rows(tmp_path, "hf_generation")
    assert [(r["model"], r["context"]) for r in generation] == [
        (f, c) for f in ("gpt2", "llama", "mamba", "mamba2") for c in (4, 8)
    ]
    assert all(math.isfinite(r["gen ×"]) for r in generation)


@pytest.mark.slow  # full-size GPT-2, Llama and Mamba training steps: ~15 s
def test_bench_linear(tmp_path: Path) -> None:
    import ssmgraph.ops.linear as fast

    if fast._ONEDNN_LINEAR is None:
        pytest.skip("PyTorch built without oneDNN's linear op")
    run_benchmark("bench_linear", tmp_path, "--rounds", "1")
    table = rows(tmp_path, "linear_onednn")
    assert len(table) == 11 and all(positive(r["speed-up ×"]) for r in table)  # 4 shapes × 2 modes, 3 models


def test_bench_text(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    sizes = ["--batch", "2", "--seq", "16", "--d-model", "16", "--layers", "1", "--vocab", "280"]
    run_benchmark("bench_text", tmp_path, *sizes, "--corpus-mb", "0.2", "--rounds", "1")
    startup = rows(tmp_path, "text_startup")
    assert len(startup) == 3 and all(positive(r["first start-up s"]) and positive(r["second start-up s"]) for r in startup)
    speed = rows(tmp_path, "text_speed")
    assert [r["vocab"] for r in speed] == [256, 280, 257]
    assert all(positive(r["tokens/s vs bytes"]) and positive(r["sample ms"]) for r in speed)


def test_bench_checkpointing(tmp_path: Path) -> None:
    sizes = ("--batch", "2", "--seq", "256", "--d-model", "16", "--layers", "2", "--heads", "2", "--rounds", "1")
    run_benchmark("bench_checkpointing", tmp_path, *sizes, "--device", "cpu")
    (row,) = rows(tmp_path, "checkpointing")
    assert all(positive(row[k]) for k in ("plain peak MiB", "checkpointed peak MiB", "plain step s", "checkpointed step s"))
    assert math.isfinite(row["memory saved %"]) and math.isfinite(row["time added %"])


@pytest.mark.slow  # trains 3 tiny models on two tasks: ~20 s
def test_mixer_tasks_matches_parameters_and_writes_the_table(tmp_path: Path) -> None:
    sizes = ("--steps", "2", "--batch-size", "2", "--d-model", "16", "--layers", "1", "--eval-size", "4")
    tasks = ("--seq-len", "32", "--pairs", "4", "--copy-len", "24", "--copy-tokens", "4")
    run_benchmark("mixer_tasks", tmp_path, "--mixers", "mix.gated_deltanet,mix.s4d,mix.attention,mix.absent", *sizes, *tasks)
    table = rows(tmp_path, "mixer_tasks")
    assert [(r["task"], r["mixer"]) for r in table] == [
        (t, m) for t in ("mqar", "selective_copying") for m in ("mix.gated_deltanet", "mix.s4d", "mix.attention")
    ]
    assert all(positive(r["parameters"]) and 0 <= r["accuracy"] <= 1 and r["d_model"] % 8 == 0 for r in table)
    assert "| mqar | mix.gated_deltanet |" in (tmp_path / "mixer_tasks.md").read_text()


@pytest.mark.slow  # three tiny fine-tuning runs from random transformers checkpoints: ~1 min
def test_finetune_results_loss_falls_and_exports_match(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    pytest.importorskip("peft")
    run_benchmark("finetune_results", tmp_path, "--steps", "4", "--eval-size", "16")
    table = rows(tmp_path, "finetune_results")
    assert [row["experiment"] for row in table] == ["gpt2", "mamba", "gpt2-lora"]
    for row in table:
        assert row["held_out_loss_after"] < row["held_out_loss_before"], row
        assert row["export_max_abs_logit_diff"] < 1e-4, row
