"""Merges by angles and spheres: Model Stock, NuSLERP, Multi-SLERP, Karcher mean, NearSwap.

mergekit's names, parameters and defaults. Each method is a pure function of one tensor's
versions, merged state dict by state dict through :func:`ssmgraph.merge.weights.tensorwise`,
plus a thin ``run_<name>``. Methods whose base is optional in mergekit (``nuslerp``,
``multislerp``) work on task vectors θᵢ − θ₀ when the recipe names a ``base_model``, on the
weights themselves when it does not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ssmgraph.merge import weights as W
from ssmgraph.merge.context import MergeContext, MergeError, MergeResult
from ssmgraph.merge.weight_methods import merged_result, model_parts

Merge = Callable[[list[Tensor]], Tensor]


def model_stock_tensor(tensors: Sequence[Tensor], filter_wise: bool = False) -> Tensor:
    """Model Stock (Jang et al. 2024, arXiv 2403.19522), as mergekit. ``tensors[0]`` is the base θ₀.

    With k fine-tuned θᵢ and cos θ the mean pairwise cosine of their task vectors θᵢ − θ₀,
    t = k·cos θ / (1 + (k − 1)·cos θ) and θ = t·mean(θᵢ) + (1 − t)·θ₀ (t = 0 where the
    denominator is below 1e-6). ``filter_wise``: one t per row (last axis) instead of one
    per tensor; a 1-D tensor is one row."""
    base, tuned = tensors[0], list(tensors[1:])
    if len(tuned) < 2:
        raise ValueError(f"model_stock needs at least 2 models besides the base, got {len(tuned)}")
    shape = base.shape
    if filter_wise:
        if base.dim() < 2:
            base, tuned = base.reshape(1, -1), [t.reshape(1, -1) for t in tuned]
    else:
        base, tuned = base.reshape(-1), [t.reshape(-1) for t in tuned]
    offsets = [t - base for t in tuned]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            norms = (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-6)
            cosines.append(((a * b).sum(-1) / norms).clamp(-1, 1))
    cos = torch.stack(cosines).mean(0).unsqueeze(-1)
    k = len(tuned)
    denominator = 1 + (k - 1) * cos
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos), k * cos / torch.where(singular, torch.ones_like(cos), denominator))
    return (t * (sum(tuned) / k) + (1 - t) * base).reshape(shape)


def nuslerp_pair(t: float, v0: Tensor, v1: Tensor, *, row_wise: bool = False, flatten: bool = True, eps: float = 1e-8) -> Tensor:
    """Spherical interpolation of two tensors (Shoemake 1985), as mergekit's ``nuslerp``.

    Over vectors u₀, u₁ (the whole tensor with ``flatten``; else its rows, or its columns with
    ``row_wise``), cos θ = û₀·û₁ and slerp = (sin((1 − t)θ) u₀ + sin(tθ) u₁) / sin θ, linear
    (1 − t) u₀ + t u₁ where 1 − cos²θ ≤ eps²."""
    shape = v0.shape
    transpose = not flatten and row_wise and v0.dim() > 1
    if flatten or v0.dim() == 0:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif transpose:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    u0 = v0 / v0.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / v1.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    cos = (u0 * u1).sum(-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    spherical = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    result = torch.where(colinear, (1 - t) * v0 + t * v1, spherical)
    return (result.transpose(0, -1) if transpose else result).reshape(shape)


def nuslerp_tensor(
    tensors: Sequence[Tensor], weights: Sequence[float], *, base: bool, row_wise: bool = False, flatten: bool = True
) -> Tensor:
    """NuSLERP: t = w₁ / (w₀ + w₁) (0.5 when the sum is below 1e-6) between the two models,
    or, with ``base`` (``tensors[0]``), θ₀ + slerp of the two task vectors."""
    total = sum(weights)
    t = 0.5 if abs(total) < 1e-6 else weights[1] / total
    if base:
        b, v0, v1 = tensors
        return b + nuslerp_pair(t, v0 - b, v1 - b, row_wise=row_wise, flatten=flatten)
    v0, v1 = tensors
    return nuslerp_pair(t, v0, v1, row_wise=row_wise, flatten=flatten)


def multislerp_tensor(
    tensors: Sequence[Tensor], weights: Sequence[float], *, base: bool, normalize_weights: bool = True, eps: float = 1e-8
) -> Tensor:
    """Multi-SLERP (Goddard), as mergekit: barycentric interpolation on the sphere.

    The unit vectors ûᵢ (task vectors with ``base``, ``tensors[0]``) are averaged, μ =
    Σ wᵢûᵢ / ‖Σ wᵢûᵢ‖ (weights normalised to sum 1 with ``normalize_weights``); the tangent
    vectors ûᵢ − (ûᵢ·μ)μ are averaged to τ = Σ wᵢ(ûᵢ − (ûᵢ·μ)μ), mapped back by the exponential
    map μ cos‖τ‖ + τ sin‖τ‖ / ‖τ‖ and scaled by Σ wᵢ‖uᵢ‖. Where Σ wᵢûᵢ vanishes: Σ wᵢuᵢ when every
    uᵢ is (nearly) zero or there are two (mergekit raises in the first case), else ValueError."""
    origin = tensors[0] if base else None
    points = list(tensors[1:] if base else tensors)
    if len(points) == 1:
        return points[0]
    stacked = torch.stack(points)
    if origin is not None:
        stacked = stacked - origin
    flat = stacked.reshape(len(points), -1)
    w = torch.tensor(weights, dtype=flat.dtype, device=flat.device)
    if normalize_weights:
        w = w / w.sum()
    norms = flat.norm(dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    if mean.norm() < eps:
        if bool((norms <= eps).all()):  # every point is (nearly) zero: so is their mean (mergekit raises)
            result = (stacked * w.view(-1, *[1] * (stacked.dim() - 1))).sum(0)
        elif len(points) != 2:
            raise ValueError(
                "the weighted mean of the models' directions is zero (antipodal tensors whose weights balance): change the weights"
            )
        else:
            result = stacked[0] * w[0] + stacked[1] * w[1]
    else:
        mean = mean / mean.norm()
        tangent = ((units - (units * mean).sum(-1, keepdim=True) * mean) * w.view(-1, 1)).sum(0)
        length = tangent.norm() + eps
        on_sphere = mean * torch.cos(length) + tangent * (torch.sin(length) / length)
        result = (on_sphere * (norms.squeeze(-1) * w).sum()).reshape(stacked.shape[1:])
    return result if origin is None else result + origin


def karcher_tensor(tensors: Sequence[Tensor], max_iter: int = 10, tol: float = 1e-5) -> Tensor:
    """Karcher (Riemannian) mean on the unit sphere (Karcher 1977), as mergekit's ``karcher``.

    Equal weights αᵢ = 1/n. Directions of norm ≤ ``tol`` are left out; the mean μ starts at
    the normalised Σ αᵢûᵢ and moves by the exponential map along the mean of the logarithm
    maps, τ = Σ αᵢ θᵢ/sin θᵢ (ûᵢ − cos θᵢ μ) with cos θᵢ = μ·ûᵢ, until ‖τ‖ < ``tol`` or
    ``max_iter`` steps; the result is μ · Σ αᵢ‖xᵢ‖."""
    n = len(tensors)
    if n == 1:
        return tensors[0]
    norms = [t.norm() for t in tensors]
    units = [t if float(r) == 0 else t / r for t, r in zip(tensors, norms)]
    valid = [i for i, r in enumerate(norms) if float(r) > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    alphas = [1 / len(valid)] * len(valid)
    points = [units[i] for i in valid]
    mean = sum(a * u for a, u in zip(alphas, points))
    mean = points[0].clone() if float(mean.norm()) < tol else mean / mean.norm()
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for a, u in zip(alphas, points):
            dot = (mean.flatten() @ u.flatten()).clamp(-1, 1)
            theta = torch.arccos(dot)
            if float(theta) >= tol:
                tangent = tangent + a * (theta / torch.sin(theta)) * (u - dot * mean)
        length = tangent.norm()
        if float(length) < tol:
            break
        mean = torch.cos(length) * mean + torch.sin(length) * (tangent / length)
        if float(mean.norm()) > tol:
            mean = mean / mean.norm()
    return sum(norms) / n * mean


def nearswap_tensor(base: Tensor, other: Tensor, t: float) -> Tensor:
    """NearSwap (Goddard; mergekit ``nearswap``): move each base entry to the other model's
    value where they are close. w = clamp(t / max(|θ₀ − θ₁|, 1e-6), 0, 1), θ = w θ₁ + (1 − w) θ₀:
    entries closer than t are swapped, farther ones move by t/|θ₀ − θ₁| of the way."""
    weight = (t / (base - other).abs().clamp(min=1e-6)).clamp(0, 1)
    return weight * other + (1 - weight) * base


def run_model_stock(context: MergeContext) -> MergeResult:
    filter_wise = context.params["filter_wise"]
    return _merge_base_first(context, lambda ts: model_stock_tensor(ts, filter_wise))


def run_nearswap(context: MergeContext) -> MergeResult:
    t = context.params["t"]
    return _merge_base_first(context, lambda ts: nearswap_tensor(ts[0], ts[1], t))


def run_karcher(context: MergeContext) -> MergeResult:
    max_iter, tol = context.params["max_iter"], context.params["tol"]
    return _merge_base_first(context, lambda ts: karcher_tensor(ts, max_iter, tol))


def run_nuslerp(context: MergeContext) -> MergeResult:
    p = context.params
    has_base, weights = _optional_base(context, exactly=2)

    def merge(ts: list[Tensor]) -> Tensor:
        return nuslerp_tensor(ts, weights, base=has_base, row_wise=p["nuslerp_row_wise"], flatten=p["nuslerp_flatten"])

    return _merge_optional_base(context, has_base, merge)


def run_multislerp(context: MergeContext) -> MergeResult:
    p = context.params
    has_base, weights = _optional_base(context, exactly=None)
    if p["normalize_weights"] and abs(sum(weights)) < 1e-12:
        raise MergeError(
            f"{context.recipe.source}: merge method 'multislerp': the model weights sum to 0, so they cannot be normalised"
        )

    def merge(ts: list[Tensor]) -> Tensor:
        return multislerp_tensor(ts, weights, base=has_base, normalize_weights=p["normalize_weights"], eps=p["eps"])

    try:
        return _merge_optional_base(context, has_base, merge)
    except ValueError as err:
        raise MergeError(f"{context.recipe.source}: merge method 'multislerp': {err}") from None


def _merge_base_first(context: MergeContext, merge: Merge) -> MergeResult:
    """``merge`` over every tensor, the base model's version first, then the others in recipe order."""
    base = context.base.model.state_dict()
    others = [m.model.state_dict() for m in context.others]
    return merged_result(context, W.tensorwise([base, *others], W.state_names(others), (), merge, model_parts(context)))


def _merge_optional_base(context: MergeContext, has_base: bool, merge: Merge) -> MergeResult:
    if has_base:
        return _merge_base_first(context, merge)
    states = [m.model.state_dict() for m in context.models]
    return merged_result(
        context, W.tensorwise(states, [f"model {m.name!r}" for m in context.models], (), merge, model_parts(context))
    )


def _optional_base(context: MergeContext, exactly: int | None) -> tuple[bool, list[float]]:
    """Whether the recipe names a base (then the others are interpolated) and the interpolated models' weights."""
    has_base = context.recipe.base_model is not None
    points = context.others if has_base else context.models
    if exactly is not None and len(points) != exactly:
        given = f"models besides the base_model {context.base.name!r}" if has_base else "models (and no base_model)"
        raise MergeError(
            f"{context.recipe.source}: merge method {context.recipe.method.name!r} interpolates exactly {exactly} models, "
            f"got {len(points)} {given}; name {exactly} models, plus a base_model for task vectors"
        )
    return has_base, [m.weight for m in points]
