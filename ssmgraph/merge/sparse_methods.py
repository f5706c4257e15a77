"""Sparsified task-vector merges: DELLA, Model Breadcrumbs, SCE (mergekit's names, parameters and defaults).

Each method is a pure function of one tensor's versions (the base first), merged state dict by
state dict through :func:`ssmgraph.merge.weights.tensorwise`, plus a thin ``run_<name>``.
With task vectors δᵢ = θᵢ − θ₀ sparsified to δ̃ᵢ and model weights wᵢ, the methods built on
mergekit's generalised task arithmetic return

    θ = θ₀ + λ · Σ wᵢ m δ̃ᵢ / D

where m is 1 (``della_linear``, ``breadcrumbs``) or the TIES sign-agreement mask
(``della``, ``breadcrumbs_ties``: the sign of Σ wᵢ δ̃ᵢ per entry), and D is Σ wᵢ m with
``normalize`` (0 → 1), else 1. ``rescale`` multiplies each δ̃ᵢ by ‖δᵢ‖₁ / ‖δ̃ᵢ‖₁ (mergekit's
L1 rescaling).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ssmgraph.merge import weights as W
from ssmgraph.merge.context import MergeContext, MergeError, MergeResult
from ssmgraph.merge.weight_methods import base_and_others, merged_result, model_parts


def magprune_probabilities(delta: Tensor, density: float, epsilon: float) -> Tensor:
    """DELLA's MagPrune keep probabilities (Deep et al. 2024, arXiv 2406.11617), as mergekit.

    Within each row (axis 1; a 1-D tensor is one row) the entries are ranked by magnitude,
    r = 0 for the smallest to n − 1 for the largest, and kept with probability
    pᵣ = (density − ε) + 2ε · r / (n − 1): from density − ε to density + ε, density on
    average. A row of one entry is kept with probability density."""
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta
    n = rows.shape[1]
    if n < 2:
        return torch.full_like(rows, density).reshape(delta.shape)
    ranks = rows.abs().argsort(dim=1, stable=True).argsort(dim=1).to(rows.dtype)
    return ((density - epsilon) + ranks / (n - 1) * 2 * epsilon).reshape(delta.shape)


def magprune(delta: Tensor, density: float, epsilon: float, rescale: bool, generator: torch.Generator | None) -> Tensor:
    """δ with entries dropped by MagPrune (one Bernoulli draw per entry from ``generator``), then L1-rescaled."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    _check_della(density, epsilon)
    mask = torch.bernoulli(magprune_probabilities(delta, density, epsilon), generator=generator)
    return W.l1_rescaled(delta, mask, rescale)


def magnitude_outliers(delta: Tensor, density: float, gamma: float, rescale: bool) -> Tensor:
    """Model Breadcrumbs' mask (Davari & Belilovsky 2024, arXiv 2312.06795), as mergekit.

    Of n entries sorted by magnitude, the ⌊γn⌋ largest (outliers) and then the smallest are
    dropped so that ⌊density·n⌋ remain; when density + γ > 1 fewer outliers are dropped."""
    if density >= 1:
        return delta
    n = delta.numel()
    keep, top = int(density * n), int(gamma * n)
    bottom = max(0, n - keep - top)
    order = delta.abs().flatten().argsort(stable=True)
    mask = torch.zeros(n, dtype=delta.dtype, device=delta.device)
    mask[order[bottom : bottom + keep]] = 1
    return W.l1_rescaled(delta, mask.view_as(delta), rescale)


def combine(
    base: Tensor, deltas: Sequence[Tensor], weights: Sequence[float], *, ties: bool, normalize: bool, lam: float
) -> Tensor:
    """θ₀ + λ · Σ wᵢ m δᵢ / D: mergekit's generalised task arithmetic on sparsified task vectors.

    ``ties`` makes m the TIES sign-agreement mask (elected by summed mass); ``normalize``
    divides by D = Σ wᵢ m (by Σ wᵢ without ``ties``; a zero divisor counts as 1)."""
    stacked = torch.stack(list(deltas))
    if ties:
        mixed = W.consensus(stacked, weights, "sum", normalize)
    else:
        w = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device).view(-1, *[1] * base.dim())
        mixed = (stacked * w).sum(0)
        total = float(sum(weights))
        if normalize and abs(total) >= 1e-8:
            mixed = mixed / total
    return base + lam * mixed


def della_tensor(
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    density: float,
    epsilon: float,
    *,
    ties: bool,
    normalize: bool,
    rescale: bool,
    lam: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DELLA-Merging (Deep et al. 2024): MagPrune each task vector, rescale, then TIES-merge
    (``ties``, mergekit ``della``) or sum (mergekit ``della_linear``). ``tensors[0]`` is the base."""
    base = tensors[0]
    deltas = [magprune(t - base, density, epsilon, rescale, generator) for t in tensors[1:]]
    return combine(base, deltas, weights, ties=ties, normalize=normalize, lam=lam)


def breadcrumbs_tensor(
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    density: float,
    gamma: float,
    *,
    ties: bool,
    normalize: bool,
    rescale: bool,
    lam: float,
) -> Tensor:
    """Model Breadcrumbs (Davari & Belilovsky 2024): drop each task vector's largest γ and
    smallest entries, then sum (``breadcrumbs``) or TIES-merge (``breadcrumbs_ties``)."""
    base = tensors[0]
    deltas = [magnitude_outliers(t - base, density, gamma, rescale) for t in tensors[1:]]
    return combine(base, deltas, weights, ties=ties, normalize=normalize, lam=lam)


def sce_tensor(tensors: Sequence[Tensor], select_topk: float) -> Tensor:
    """SCE (Wan et al. 2024, FuseChat, arXiv 2408.07990), as mergekit: over task vectors δᵢ,

    * Select: with select_topk < 1, keep the ⌊select_topk · z⌋ entries of largest variance
      across the models (z: entries of non-zero variance) in every δᵢ;
    * Calculate: ηᵢ = mean(δᵢ²) / Σⱼ mean(δⱼ²) (uniform when the sum is below 1e-6);
    * Erase: mᵢ = [sign δᵢ = sign Σⱼ δⱼ] per entry;

    θ = θ₀ + Σ ηᵢ mᵢ δᵢ / max(Σ ηᵢ mᵢ, 1e-6). ``tensors[0]`` is the base."""
    base = tensors[0]
    deltas = torch.stack([t - base for t in tensors[1:]])
    if select_topk < 1:
        deltas = deltas * _top_variance(deltas, select_topk)
    erase = deltas.sign() == torch.where(deltas.sum(0) >= 0, 1.0, -1.0).to(deltas.dtype)
    energy = deltas.square().reshape(len(deltas), -1).mean(1)
    total = float(energy.sum())
    eta = torch.full_like(energy, 1 / len(energy)) if abs(total) < 1e-6 else energy / total
    kept = eta.view(-1, *[1] * base.dim()) * erase
    return base + (deltas * kept).sum(0) / kept.sum(0).clamp(min=1e-6)


def _top_variance(deltas: Tensor, fraction: float) -> Tensor:
    """1 at the ⌊fraction · (entries of non-zero variance)⌋ entries of largest variance across models."""
    variance = deltas.var(0, unbiased=False)
    mask = torch.zeros_like(variance)
    k = int(int(torch.count_nonzero(variance)) * fraction)
    if fraction > 0 and k > 0:
        mask.view(-1)[variance.flatten().topk(k).indices] = 1
    return mask


def run_della(context: MergeContext) -> MergeResult:
    return _run_della(context, ties=True)


def run_della_linear(context: MergeContext) -> MergeResult:
    return _run_della(context, ties=False)


def run_breadcrumbs(context: MergeContext) -> MergeResult:
    return _run_breadcrumbs(context, ties=False)


def run_breadcrumbs_ties(context: MergeContext) -> MergeResult:
    return _run_breadcrumbs(context, ties=True)


def run_sce(context: MergeContext) -> MergeResult:
    base, others, _ = base_and_others(context)
    topk = context.params["select_topk"]
    return merged_result(
        context, W.tensorwise([base, *others], W.state_names(others), (), lambda ts: sce_tensor(ts, topk), model_parts(context))
    )


def _run_della(context: MergeContext, *, ties: bool) -> MergeResult:
    p = context.params
    density, epsilon = p["density"], p["epsilon"]
    if 0 < density < 1:
        try:
            _check_della(density, epsilon)
        except ValueError as err:
            raise MergeError(f"{context.recipe.source}: merge method {context.recipe.method.name!r}: {err}") from None
    base, others, weights = base_and_others(context)
    generator = context.generator()

    def merge(tensors: list[Tensor]) -> Tensor:
        return della_tensor(
            tensors,
            weights,
            density,
            epsilon,
            ties=ties,
            normalize=p["normalize"],
            rescale=p["rescale"],
            lam=p["lambda"],
            generator=generator,
        )

    return merged_result(context, W.tensorwise([base, *others], W.state_names(others), (), merge, model_parts(context)))


def _run_breadcrumbs(context: MergeContext, *, ties: bool) -> MergeResult:
    p = context.params
    base, others, weights = base_and_others(context)

    def merge(tensors: list[Tensor]) -> Tensor:
        return breadcrumbs_tensor(
            tensors,
            weights,
            p["density"],
            p["gamma"],
            ties=ties,
            normalize=p["normalize"],
            rescale=p["rescale"],
            lam=p["lambda"],
        )

    return merged_result(context, W.tensorwise([base, *others], W.state_names(others), (), merge, model_parts(context)))


def _check_della(density: float, epsilon: float) -> None:
    if not (0 < density - epsilon and density + epsilon < 1):
        raise ValueError(
            f"density ± epsilon must lie inside (0, 1), but density {density:g} and epsilon {epsilon:g} give "
            f"[{density - epsilon:g}, {density + epsilon:g}]: lower epsilon, or move density away from 0 and 1"
        )
