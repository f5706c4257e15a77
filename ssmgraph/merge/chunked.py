"""In-place merge steps over one tensor's versions, a chunk at a time, for out-of-core merges.

The per-tensor statistics — TIES's k-th largest magnitude, DARE's L1 norms, SLERP's angle — are
accumulated over chunks, and the elementwise steps — trimming, dropping, sign election, disjoint
mean, interpolation — run chunk by chunk on the caller's buffer, so a merge holds its inputs and
a few chunks, not the full-size temporaries (|δ|, masks, sums, divisors, float64 copies) of the
out-of-place functions in :mod:`ssmgraph.merge.weights`. Each element goes through the same
operations as there, so the same bits; the exceptions: SLERP's dot product and norms are float64
sums over chunks (one rounding apart from a float64 sum over the whole tensor) and DARE's L1 norms
are float64 sums (they were sums in the working dtype).

Exactness costs memory in one case: where equal magnitudes straddle TIES's k-th place (or the
tensor holds a NaN), the kept entries are those of ``torch.argsort``'s top k, mergekit's call,
which needs |δ| and its int64 order in full (:func:`argsort_mask`).

The steps that the out-of-place functions share live here too — the k-th largest magnitude by
selection (:func:`kth_largest_magnitude`), argsort's top k, the sign election
(:func:`consensus`) — so :mod:`ssmgraph.merge.weights` builds on this module, not the reverse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

CHUNK_BYTES = 1 << 22
"""Bytes of one chunk of one tensor (4 MB): the temporaries' size."""
DOT_THRESHOLD = 0.9995
"""Above this |cos θ| SLERP falls back to linear interpolation (mergekit's threshold)."""
L1_EPS = 1e-7
"""DARE's L1 rescaling is skipped when either norm is below this (mergekit's ``rescaled_masked_tensor``)."""
SAMPLE = 1 << 15
"""Entries sampled (evenly strided) to bracket the k-th largest before selecting it exactly."""
BAND = 1 << 22
"""At most this many entries are gathered from the sampled bracket (16 MB in float32)."""


def step_of(t: Tensor) -> int:
    """Elements per chunk of ``t``."""
    return max(1, CHUNK_BYTES // t.element_size())


def chunks(flat: Tensor) -> Iterator[Tensor]:
    """Views of the last dimension of ``flat`` (a 1-D tensor or a stack of them), a chunk at a time."""
    n, step = flat.shape[-1], step_of(flat)
    return (flat[..., i : i + step] for i in range(0, n, step))


def count(flat: Tensor, where: Callable[[Tensor], Tensor]) -> int:
    """How many entries of 1-D ``flat`` satisfy ``where`` (evaluated chunk by chunk)."""
    return sum(int(torch.count_nonzero(where(c))) for c in chunks(flat))


def l1(flat: Tensor) -> float:
    """‖flat‖₁, summed in float64 chunk by chunk."""
    return sum(float(c.abs().sum(dtype=torch.float64)) for c in chunks(flat))


def top_magnitude_(delta: Tensor, density: float) -> Tensor:
    """``delta`` times :func:`~ssmgraph.merge.weights.top_magnitude_mask` (its top k magnitudes,
    ties at the k-th place in argsort's order), in place and chunk by chunk where no tie straddles."""
    flat = delta.view(-1)
    k = max(1, int(density * flat.numel()))
    if k >= flat.numel():
        return delta  # every entry kept: the mask is all ones
    v = kth_largest_if_exact(flat, k)
    if v is None:
        return delta.mul_(argsort_mask(delta, k))
    for c in chunks(flat):
        c.mul_(c.abs() >= v)
    return delta


def outliers_cut_(delta: Tensor, density: float, gamma: float) -> Tensor | None:
    """``delta`` times Model Breadcrumbs' mask (:func:`ssmgraph.merge.sparse_methods.magnitude_outliers`:
    the entries of ranks bottom … bottom + keep − 1 in the stable ascending order of magnitudes), in
    place, without the argsort: the two boundary magnitudes by selection, and of the entries equal to
    one of them those whose rank is inside (the stable order ranks equal magnitudes by index).
    None, ``delta`` untouched, where nothing is kept or it holds a NaN."""
    flat = delta.view(-1)
    n = flat.numel()
    keep, top = int(density * n), int(gamma * n)
    bottom = max(0, n - keep - top)
    if keep == 0 or bool(torch.isnan(flat.amax())):
        return None
    smallest = torch.stack([c.abs().min() for c in chunks(flat)]).min()
    lo, hi = (kth_largest_magnitude(flat, n - rank)[0] if rank else smallest for rank in (bottom, bottom + keep - 1))  # type: ignore[index]
    bounds = [lo] if lo == hi else [lo, hi]
    below = [count(flat, lambda c, b=b: c.abs() < b) for b in bounds]  # the rank of the first entry equal to each
    seen = [0] * len(bounds)
    for c in chunks(flat):
        a = c.abs()
        kept = (a > lo) & (a < hi)
        for j, b in enumerate(bounds):
            equal = a == b
            found = int(torch.count_nonzero(equal))
            if found:
                rank = torch.cumsum(equal, 0).add_(below[j] + seen[j] - 1)
                kept |= equal & (rank >= bottom) & (rank < bottom + keep)
                seen[j] += found
        c.mul_(kept)
    return delta


def kth_largest_magnitude(flat: Tensor, k: int) -> tuple[Tensor, int] | None:
    """The k-th largest of |flat| (1-D) and how many entries are at least it, by selection, no sort:
    a strided sample's order statistics bracket it, [lo, hi]; when the bracket is confirmed (fewer
    than k entries above hi, at least k at or above lo) it is the (k − #above)-th largest of the few
    entries inside, else the k-th largest of all. Exact either way; the sample, the counts and the
    entries inside the bracket are taken chunk by chunk, so no full |flat| is made. None when
    ``flat`` holds a NaN or k is not in [1, n)."""
    n = flat.numel()
    if not 1 <= k < n or bool(torch.isnan(flat.amax())):  # amax: NaN wherever one is, no temporaries
        return None
    if n > 8 * SAMPLE:
        sample = flat[:: n // SAMPLE].abs().sort(descending=True).values
        m = sample.numel()
        rank = k * m / n
        margin = 8 * math.sqrt(m * (k / n) * (1 - k / n)) + 8
        hi = sample[max(0, int(rank - margin))]
        lo = sample[min(m - 1, int(rank + margin))]
        above = inside = 0
        band: list[Tensor] | None = []
        for a in map(torch.abs, chunks(flat)):
            above += int(torch.count_nonzero(a > hi))
            within = a[(a >= lo) & (a <= hi)]
            inside += within.numel()
            band = band if band is None or inside > BAND else [*band, within]
        if above < k <= above + inside:
            if lo == hi:
                return lo, above + inside
            if band is not None:
                values = torch.cat(band)
                del band
                v = kth_smallest_(values, inside - (k - above))
                return v, above + int(torch.count_nonzero(values >= v))
    v = kth_smallest_(flat.abs(), n - k)
    return v, count(flat, lambda c: c.abs() >= v)


def kth_largest_if_exact(flat: Tensor, k: int) -> Tensor | None:
    """The k-th largest magnitude v of 1-D ``flat`` when exactly k entries are ≥ v — no tie straddles
    the k-th place, so argsort's top k is that set whatever its order among equals; None otherwise
    (ties at the boundary, a NaN, k not in [1, n)): then only :func:`argsort_mask` gives its top k."""
    found = kth_largest_magnitude(flat, k)
    return found[0] if found is not None and found[1] == k else None


def argsort_mask(delta: Tensor, k: int) -> Tensor:
    """True at the first k entries of ``torch.argsort(|δ|, descending=True)``: mergekit's call
    (``sparsify.magnitude``), which orders the equal magnitudes at the k-th place its own way."""
    magnitudes = delta.abs().flatten()
    order = torch.empty(magnitudes.shape, dtype=torch.long, device=magnitudes.device)
    torch.sort(magnitudes, descending=True, out=(magnitudes, order))  # argsort's kernel, sorting its own copy in place
    del magnitudes
    mask = torch.zeros(delta.numel(), dtype=torch.bool, device=delta.device)
    mask[order[:k]] = True
    return mask.view_as(delta)


def kth_smallest_(values: Tensor, r: int) -> Tensor:
    """The r-th smallest (from 0) of 1-D ``values``, which are reordered: numpy's in-place
    introselect where it takes the dtype (``torch.kthvalue`` holds a copy and int64 indices)."""
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        values.numpy().partition(r)
        return values[r].clone()  # not a view that would keep ``values`` alive
    return torch.kthvalue(values, r + 1).values


def random_(delta: Tensor, density: float, generator: torch.Generator | None) -> Tensor:
    """``delta`` times :func:`~ssmgraph.merge.weights.random_mask` in place: the same draws from
    ``generator`` (a chunk of them at a time, in order), so the same mask."""
    flat = delta.view(-1)
    where = generator.device if generator is not None else flat.device
    for c in chunks(flat):
        c.mul_((torch.rand(c.shape, generator=generator, device=where, dtype=torch.float64) < density).to(c.device))
    return delta


def l1_rescale_(delta: Tensor, trim: Callable[[Tensor], Tensor], rescale: bool) -> Tensor:
    """``trim(delta)`` (in place), times ‖δ‖₁ / ‖trimmed δ‖₁ with ``rescale`` unless either is below
    ``L1_EPS``: :func:`~ssmgraph.merge.weights.l1_rescaled` without the full-size copies."""
    before = l1(delta.view(-1)) if rescale else 0.0
    trim(delta)
    if not rescale:
        return delta
    after = l1(delta.view(-1))
    return delta if before < L1_EPS or after < L1_EPS else delta.mul_(before / after)


def combine_(tensors: Tensor, base: int, weights: Sequence[float], *, ties: bool, normalize: bool, lam: float) -> Tensor:
    """θ₀ + λ · Σ wᵢ m δᵢ / D (:func:`ssmgraph.merge.sparse_methods.combine`) into the base's row of
    ``tensors`` (``[inputs, *shape]``, the other rows holding the sparsified task vectors, which are
    overwritten), a chunk at a time: the sign election and the divisor are elementwise."""
    rows = [i for i in range(len(tensors)) if i != base]
    flat = tensors.view(len(tensors), -1)
    b = flat[base]
    w = torch.tensor(weights, dtype=flat.dtype, device=flat.device).view(-1, 1)
    total = float(sum(weights))
    block = rows == list(range(rows[0], rows[-1] + 1))
    step = step_of(flat)
    for i in range(0, flat.shape[1], step):
        if block:  # a view of the buffer; else a chunk-sized copy of the task vectors' chunks
            deltas = flat[rows[0] : rows[-1] + 1, i : i + step]
        else:
            deltas = torch.stack([flat[r, i : i + step] for r in rows])
        if ties:
            mixed = consensus(deltas, weights, "sum", normalize, inplace=True)
        else:
            mixed = deltas.mul_(w).sum(0)
            if normalize and abs(total) >= 1e-8:
                mixed.div_(total)
        b[i : i + step].add_(mixed.mul_(lam))
    return tensors[base]


def consensus(deltas: Tensor, weights: Sequence[float], majority: str, normalize: bool, *, inplace: bool = False) -> Tensor:
    """TIES's sign election and disjoint mean over ``deltas`` (``[models, ...]``): Σ of the weighted
    deltas whose sign is the elected one — the sign of Σ wᵢ δᵢ (``majority`` "sum") or of the count of
    signs ("count"), 0 electing + — divided by the sum of their weights with ``normalize`` (0 → 1).
    ``inplace``: ``deltas`` is overwritten (the same values, one full-size temporary fewer)."""
    if majority not in ("sum", "count"):
        raise ValueError(f"majority must be 'sum' or 'count', got {majority!r}")
    w = torch.tensor(weights, dtype=deltas.dtype, device=deltas.device).view(-1, *[1] * (deltas.dim() - 1))
    weighted = deltas.mul_(w) if inplace else deltas * w
    if majority == "sum":
        positive = weighted.sum(0) >= 0
    else:
        positive = weighted.sign().sum(0) >= 0
    # sign(x) == elected, without the signs: x > 0 where + is elected, x < 0 where − is
    agree = torch.empty(weighted.shape, dtype=torch.bool, device=weighted.device)
    for row, x in zip(agree, weighted):
        torch.where(positive, x > 0, x < 0, out=row)
    del positive
    for x, a in zip(weighted, agree):  # row by row: the float copy of the mask a product makes is one row's
        x.mul_(a)
    merged = weighted.sum(0)
    if not normalize:
        return merged
    for x, a, wi in zip(weighted, agree, w):  # w * agree, into the weighted deltas' buffer (summed: free)
        x.copy_(a).mul_(wi)
    divisor = weighted.sum(0)
    return merged.div_(divisor.masked_fill_(divisor == 0, 1))


def slerp_(v0: Tensor, v1: Tensor, t: float, eps: float = 1e-8) -> Tensor:
    """:func:`ssmgraph.merge.weights.slerp_tensor` in place (``v0`` and ``v1`` are overwritten, the
    result is ``v0``): the norms and the dot product are float64 sums over chunks, so no float64
    copy of either tensor is made; the interpolation is elementwise in the tensors' dtype."""
    a, b = v0.view(-1), v1.view(-1)
    step = max(1, CHUNK_BYTES // 8)  # float64 copies of a chunk
    n0 = n1 = dot = 0.0
    for i in range(0, a.numel(), step):
        x, y = a[i : i + step].double(), b[i : i + step].double()
        n0, n1, dot = n0 + float(x @ x), n1 + float(y @ y), dot + float(x @ y)
        del x, y
    n0, n1 = math.sqrt(n0), math.sqrt(n1)
    cos = dot / (n0 if n0 > eps else 1.0) / (n1 if n1 > eps else 1.0)
    if abs(cos) > DOT_THRESHOLD:
        return v0.mul_(1 - t).add_(v1.mul_(t))
    theta = math.acos(cos)
    return v0.mul_(math.sin((1 - t) * theta)).add_(v1.mul_(math.sin(t * theta))).div_(math.sin(theta))
