"""Weight-space merges of state dicts: linear, task arithmetic, TIES, DARE, SLERP.

Pure functions over ``{name: tensor}``, tensor by tensor, with mergekit's conventions
(defaults, sign election, normalisation, the SLERP fallback), so its recipes carry over:

* ``linear``: Σ wᵢ θᵢ, divided by Σ wᵢ unless ``normalize=False``.
* ``task_arithmetic``: θ₀ + λ Σ wᵢ δᵢ with task vectors δᵢ = θᵢ − θ₀.
* ``ties``: trim each δᵢ to its top ``density`` entries by magnitude, elect a sign per entry
  (sign of Σ wᵢ δᵢ, or of the count of signs), average the entries that agree (divided by
  the sum of their weights: mergekit's ``normalize: true``).
* ``dare``: keep each entry of δᵢ with probability ``density`` and divide it by ``density``
  (the paper's 1/p, so the expectation is δᵢ), then sum (``dare_linear``), or with
  ``sign_election`` sum the entries agreeing with the elected sign (``dare_ties``; mergekit
  does not normalise it).
* ``slerp``: per tensor, the great-circle interpolation of the two flattened tensors, linear
  when they are nearly colinear (|cos| > 0.9995).

Floating tensors are merged in at least fp32 and cast back to the first (base) model's dtype.
Integer and bool tensors (counters, masks, token ids), and the names in ``keep`` (say a
model's buffers), are copied from the first (base) model: averaging them means nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence

import torch
from torch import Tensor

StateDict = dict[str, Tensor]
State = Mapping[str, Tensor]
DOT_THRESHOLD = 0.9995
"""Above this |cos θ| SLERP falls back to linear interpolation (mergekit's threshold)."""


def linear(states: Sequence[State], weights: Sequence[float], normalize: bool = True, *, keep: Collection[str] = ()) -> StateDict:
    """Σ wᵢ θᵢ (/ Σ wᵢ with ``normalize``): a weighted model soup."""
    _check_weights(weights, len(states), "state dicts")
    total = sum(weights)
    if normalize and total == 0:
        raise ValueError("the model weights sum to 0, so they cannot be normalised (set normalize: false)")

    def merge(tensors: list[Tensor]) -> Tensor:
        out = sum(w * t for w, t in zip(weights, tensors))
        return out / total if normalize else out

    return _tensorwise(states, [f"model {i}" for i in range(len(states))], keep, merge)


def task_arithmetic(
    base: State, states: Sequence[State], weights: Sequence[float], scale: float = 1.0, *, keep: Collection[str] = ()
) -> StateDict:
    """θ₀ + λ Σ wᵢ (θᵢ − θ₀), λ = ``scale``."""
    _check_weights(weights, len(states), "models besides the base")

    def merge(tensors: list[Tensor]) -> Tensor:
        b, others = tensors[0], tensors[1:]
        return b + scale * sum(w * (t - b) for w, t in zip(weights, others))

    return _tensorwise([base, *states], _names(states), keep, merge)


def ties(
    base: State,
    states: Sequence[State],
    weights: Sequence[float],
    density: float,
    majority: str = "sum",
    normalize: bool = True,
    *,
    keep: Collection[str] = (),
) -> StateDict:
    """TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint mean, added to the base."""
    _check_weights(weights, len(states), "models besides the base")
    _check_density(density)

    def merge(tensors: list[Tensor]) -> Tensor:
        b = tensors[0]
        deltas = torch.stack([_top_magnitude(t - b, density) for t in tensors[1:]])
        return b + _consensus(deltas, weights, majority, normalize)

    return _tensorwise([base, *states], _names(states), keep, merge)


def dare(
    base: State,
    states: Sequence[State],
    weights: Sequence[float],
    density: float,
    rescale: bool = True,
    sign_election: bool = False,
    generator: torch.Generator | None = None,
    *,
    keep: Collection[str] = (),
) -> StateDict:
    """DARE (Yu et al. 2024): drop task-vector entries at random, rescale, sum or TIES-merge.

    The masks are drawn from ``generator`` tensor by tensor in state-dict order, model by
    model, so a seeded generator gives a bitwise-reproducible merge."""
    _check_weights(weights, len(states), "models besides the base")
    _check_density(density)

    def merge(tensors: list[Tensor]) -> Tensor:
        b = tensors[0]
        deltas = torch.stack([_drop(t - b, density, rescale, generator) for t in tensors[1:]])
        if sign_election:
            return b + _consensus(deltas, weights, "sum", normalize=False)
        return b + sum(w * d for w, d in zip(weights, deltas))

    return _tensorwise([base, *states], _names(states), keep, merge)


def slerp(a: State, b: State, t: float, eps: float = 1e-8, *, keep: Collection[str] = ()) -> StateDict:
    """Spherical interpolation from ``a`` (t = 0) to ``b`` (t = 1), tensor by tensor.

    As mergekit: the angle comes from the tensors normalised (those with a norm at most
    ``eps`` are left as they are), the interpolation weights sin((1−t)θ)/sin θ and
    sin(tθ)/sin θ apply to the tensors themselves, and nearly colinear tensors are
    interpolated linearly."""

    def merge(tensors: list[Tensor]) -> Tensor:
        v0, v1 = tensors
        u0, u1 = v0.double().flatten(), v1.double().flatten()
        n0, n1 = u0.norm(), u1.norm()
        dot = float((u0 / n0 if n0 > eps else u0) @ (u1 / n1 if n1 > eps else u1))
        if abs(dot) > DOT_THRESHOLD:
            return (1 - t) * v0 + t * v1
        theta = math.acos(dot)
        return (math.sin((1 - t) * theta) * v0 + math.sin(t * theta) * v1) / math.sin(theta)

    return _tensorwise([a, b], ["model a", "model b"], keep, merge)


def _tensorwise(
    states: Sequence[State], names: Sequence[str], keep: Collection[str], merge: Callable[[list[Tensor]], Tensor]
) -> StateDict:
    """Apply ``merge`` to each floating tensor (the first model's tensor first); copy the rest."""
    if not states:
        raise ValueError("nothing to merge: no state dicts")
    _check_alike(states, names)
    out = {}
    for key, first in states[0].items():
        if key in keep or not first.is_floating_point():
            out[key] = first.detach().clone()
            continue
        work = torch.promote_types(first.dtype, torch.float32)
        out[key] = merge([s[key].detach().to(work) for s in states]).to(first.dtype)
    return out


def _check_alike(states: Sequence[State], names: Sequence[str]) -> None:
    first = states[0]
    for name, state in zip(names[1:], states[1:]):
        missing, extra = sorted(first.keys() - state.keys()), sorted(state.keys() - first.keys())
        if missing or extra:
            parts = [f"lacks {_few(missing)}" if missing else "", f"has extra {_few(extra)}" if extra else ""]
            raise ValueError(f"{name} does not have the tensors of {names[0]}: it {' and '.join(p for p in parts if p)}")
        for key, tensor in first.items():
            if state[key].shape != tensor.shape:
                raise ValueError(f"{key}: shape {tuple(tensor.shape)} in {names[0]} but {tuple(state[key].shape)} in {name}")


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" (and {len(keys) - 3} more)" if len(keys) > 3 else "")


def _names(states: Sequence[State]) -> list[str]:
    return ["the base"] + [f"model {i + 1}" for i in range(len(states))]


def _check_weights(weights: Sequence[float], count: int, what: str) -> None:
    if len(weights) != count:
        raise ValueError(f"{len(weights)} weights for {count} {what}")
    if count == 0:
        raise ValueError(f"nothing to merge: no {what}")


def _check_density(density: float) -> None:
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")


def _top_magnitude(delta: Tensor, density: float) -> Tensor:
    """``delta`` with all but its ⌊density·n⌋ (at least one) largest-magnitude entries zeroed."""
    if density >= 1:
        return delta
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=torch.bool, device=delta.device)
    mask[delta.abs().flatten().argsort(descending=True, stable=True)[:k]] = True
    return delta * mask.view_as(delta)


def _drop(delta: Tensor, density: float, rescale: bool, generator: torch.Generator | None) -> Tensor:
    """Keep each entry with probability ``density`` (divided by it with ``rescale``)."""
    device = generator.device if generator is not None else delta.device
    kept = torch.rand(delta.shape, generator=generator, device=device, dtype=torch.float64) < density
    out = delta * kept.to(delta.device)
    return out / density if rescale else out


def _consensus(deltas: Tensor, weights: Sequence[float], majority: str, normalize: bool) -> Tensor:
    """Σ of the weighted deltas whose sign is the elected one (÷ the sum of their weights)."""
    w = torch.tensor(weights, dtype=deltas.dtype, device=deltas.device).view(-1, *[1] * (deltas.dim() - 1))
    weighted = deltas * w
    signs = weighted.sign()
    if majority == "sum":
        elected = torch.where(weighted.sum(0) >= 0, 1.0, -1.0)
    elif majority == "count":
        elected = torch.where(signs.sum(0) >= 0, 1.0, -1.0)
    else:
        raise ValueError(f"majority must be 'sum' or 'count', got {majority!r}")
    agree = signs == elected
    merged = (weighted * agree).sum(0)
    if not normalize:
        return merged
    divisor = (w * agree).sum(0)
    return merged / torch.where(divisor == 0, torch.ones_like(divisor), divisor)
