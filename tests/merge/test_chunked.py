"""The chunked in-place merge steps (ssmgraph/merge/chunked.py) give the out-of-place functions'
results — bit for bit where the operations are elementwise — and hold no full-size temporaries:
a mergekit-dialect method's working memory beyond its input buffer stays under one tensor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssmgraph.merge import chunked as C
from ssmgraph.merge import sparse_methods as S
from ssmgraph.merge import weights as W

N = 8 * W.SAMPLE + 12345  # past the sampled bracket's threshold


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(C, "CHUNK_BYTES", 1 << 16)  # many chunks, odd last one


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int64 if t.dtype == torch.float64 else torch.int32)


def _delta(kind: str, gen: torch.Generator) -> torch.Tensor:
    return {
        "randn": lambda: torch.randn(N, generator=gen),
        "scaled_rows": lambda: torch.randn(N // 100, 100, generator=gen) * torch.logspace(-3, 3, N // 100).view(-1, 1),
        "ties": lambda: torch.randint(-3, 4, (N,), generator=gen).float(),
        "zeros": lambda: torch.cat([torch.zeros(N // 2), torch.randn(N - N // 2, generator=gen)]),
        "constant": lambda: torch.full((N,), -0.5),
    }[kind]()


@pytest.mark.parametrize("kind", ["randn", "scaled_rows", "ties", "zeros", "constant"])
def test_top_magnitude_in_place_is_the_masked_delta(kind):
    gen = torch.Generator().manual_seed(0)
    delta = _delta(kind, gen)
    for density in (1e-5, 0.1, 0.5, 0.9, 1.0):
        expected = delta * W.top_magnitude_mask(delta, density) if density < 1 else delta
        assert torch.equal(_bits(C.top_magnitude_(delta.clone(), density)), _bits(expected)), density


def test_kth_largest_magnitude_is_selection_over_all_entries():
    gen = torch.Generator().manual_seed(3)
    flat = torch.randn(N, generator=gen, dtype=torch.float64)
    for k in (1, 7, N // 3, N - 1):
        v, at_least = C.kth_largest_magnitude(flat, k)
        assert v == flat.abs().sort(descending=True).values[k - 1]
        assert at_least == int((flat.abs() >= v).sum()) == k
    assert C.kth_largest_magnitude(torch.cat([flat, torch.tensor([float("nan")], dtype=flat.dtype)]), 5) is None


def test_random_drop_draws_the_same_mask_and_rescales_to_the_l1_norm():
    gen = torch.Generator().manual_seed(4)
    delta = torch.randn(N, generator=gen)
    got = C.l1_rescale_(delta.clone(), lambda d: C.random_(d, 0.3, torch.Generator().manual_seed(9)), True)
    mask = W.random_mask(delta.shape, 0.3, torch.Generator().manual_seed(9), delta.device)
    assert torch.equal(got != 0, mask & (delta != 0))
    torch.testing.assert_close(got, W.l1_rescaled(delta, mask, True), rtol=1e-6, atol=0)


@pytest.mark.parametrize("ties", [True, False])
@pytest.mark.parametrize("base", [0, 1, 3])
def test_combine_in_place_is_bitwise_the_out_of_place_one(ties, base):
    gen = torch.Generator().manual_seed(1)
    tensors = torch.randint(-2, 3, (4, 300, 111), generator=gen).float() * torch.rand(4, 300, 111, generator=gen)
    weights = [0.5, -0.25, 1.0]
    deltas = [t for i, t in enumerate(tensors) if i != base]
    expected = S.combine(tensors[base], deltas, weights, ties=ties, normalize=True, lam=0.7)
    got = C.combine_(tensors.clone(), base, weights, ties=ties, normalize=True, lam=0.7)
    assert torch.equal(_bits(got), _bits(expected))  # signed zeros included


def test_slerp_in_place_agrees_with_the_out_of_place_one():
    gen = torch.Generator().manual_seed(2)
    pairs = [(torch.randn(500, 70, generator=gen), torch.randn(500, 70, generator=gen)), (torch.ones(9), 2 * torch.ones(9))]
    pairs.append((torch.zeros(40), torch.randn(40, generator=gen)))  # a zero norm: left unnormalised
    for v0, v1 in pairs:
        for dtype in (torch.float32, torch.float64):
            a, b = v0.to(dtype), v1.to(dtype)
            expected = W.slerp_tensor(a, b, 0.3)
            torch.testing.assert_close(C.slerp_(a.clone(), b.clone(), 0.3), expected, rtol=1e-12, atol=1e-12)


MEMORY_SCRIPT = """
import ctypes
import sys
import torch
from ssmgraph.merge import chunked
from ssmgraph.merge.mergekit.methods import METHODS

chunked.CHUNK_BYTES = 1 << 18  # 256 KB chunks: their temporaries a small fraction of an 8 MB tensor
torch.set_num_threads(1)  # no worker threads spinning on a busy machine; the memory is the same

def status(field):  # KiB
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))

def merge(method, count):
    tensors = data[:count].clone()
    if method not in ("linear", "slerp"):
        tensors[0].zero_()  # a zero base: the task vectors keep their distinct magnitudes
    shared = {"t": 0.4, "normalize": True, "rescale": method == "dare_ties", "lambda": 1.0, "int8_mask": False}
    per = [{"weight": 0.6, "density": 0.5, "gamma": 0.01}] * count
    trim(0)  # what was freed goes back to the system, so the merge cannot reuse it unseen
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the resident size now
    before = status("VmRSS")
    METHODS[method].merge(tensors, 0, shared, per, torch.Generator().manual_seed(1))
    return (status("VmHWM") - before) * 1024 / tensors[0].nbytes

trim = ctypes.CDLL(None).malloc_trim  # glibc
trim.argtypes = [ctypes.c_size_t]
n = int(sys.argv[1])
gen = torch.Generator().manual_seed(0)
magnitudes = (torch.arange(n) + 1).float() * 2.0**-24  # distinct: no tie at the k-th place
signs = torch.randint(0, 2, (2, n), generator=gen) * 2 - 1
data = torch.stack([magnitudes.flip(0), *(magnitudes[torch.randperm(n, generator=gen)] * s for s in signs)])
del magnitudes, signs
for method, count in (("linear", 2), ("task_arithmetic", 3), ("ties", 3), ("dare_ties", 3), ("breadcrumbs_ties", 3), ("slerp", 2)):
    print(method, merge(method, count))
"""


def _clear_refs_works() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@pytest.mark.slow  # 5-15 s on 2 busy cores: a subprocess importing torch, six merges of 8 MB tensors
@pytest.mark.skipif(
    not Path("/proc/self/status").is_file() or not _clear_refs_works(), reason="reads the peak from /proc (Linux)"
)
def test_mergekit_methods_work_in_their_input_buffer():
    """Working memory of one merged tensor beyond the ``[inputs, *shape]`` buffer (VmHWM after a reset − VmRSS),
    in tensors: under one (0.1–0.6: chunks, TIES's sampled bracket) for task arithmetic, TIES, DARE-TIES, Breadcrumbs-TIES
    and slerp, where the out-of-place steps held 1, 2.9, 2.8, 6 and 4 (|δ|, masks, sums, divisor, argsort, float64 copies)."""
    n = 1 << 21  # 8 MB per tensor
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 16)}  # glibc: blocks past 64 KB mapped and unmapped, not pooled
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(n)], capture_output=True, text=True, timeout=300, check=False, env=env
    )
    assert done.returncode == 0, done.stderr
    growth = {line.split()[0]: float(line.split()[1]) for line in done.stdout.splitlines()}
    print(growth)
    assert len(growth) == 6, done.stdout
    assert {m: g for m, g in growth.items() if g >= 1} == {}, growth
