"""Weight-space merges of state dicts: linear, task arithmetic, TIES, DARE, SLERP.

Pure functions over ``{name: tensor}``, tensor by tensor, with mergekit's conventions
(sign election, normalisation, sparsification, rescaling, the SLERP fallback), so its
recipes carry over:

* ``linear``: Σ wᵢ θᵢ, divided by Σ wᵢ unless ``normalize=False``.
* ``task_arithmetic``: θ₀ + λ Σ wᵢ δᵢ with task vectors δᵢ = θᵢ − θ₀.
* ``ties``: trim each δᵢ to its top k = max(1, ⌊density·n⌋) entries by magnitude — exactly k:
  entries tied at the boundary are ordered by ``torch.argsort(descending=True)``, mergekit's
  call (``sparsify.magnitude``) — elect a sign per entry (sign of Σ wᵢ δᵢ, or of the count of
  signs; 0 elects +), average the entries that agree (divided by the sum of their weights:
  mergekit's ``normalize: true``).
* ``dare``: keep each entry of δᵢ with probability ``density``; with ``rescale`` multiply the
  kept ones by ‖δᵢ‖₁ / ‖kept δᵢ‖₁, so the task vector keeps its L1 norm (mergekit's
  ``rescale_norm: l1``; left unscaled when either norm is under 1e-7), then sum
  (``dare_linear``), or with ``sign_election`` sum the entries agreeing with the elected sign
  (``dare_ties``; mergekit does not normalise it).
* ``slerp``: per tensor, the great-circle interpolation of the two flattened tensors, from
  the first (t = 0) to the second (t = 1), linear when they are nearly colinear (|cos| > 0.9995).

``parts`` maps a key to the row counts of the tensors stacked in it (say Llama's q, k and v
rows in one ``qkv``, :func:`ssmgraph.merge.parts.fused_parts`): each part is then merged as a
tensor of its own — its own top-k, mask norm and angle — and the parts are stacked back; or
to a :class:`Joined`, for the converse (Phi-3's ``w_gate`` and ``w_up`` rows are one
``gate_up_proj``): those keys' tensors are stacked, merged as one tensor and split back.
Floating tensors are merged in at least fp32 and cast back to the first (base) model's dtype.
Integer and bool tensors (counters, masks, token ids), and the names in ``keep`` (say a
model's buffers), are copied from the first (base) model: averaging them means nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ssmgraph.merge.chunked import (
    DOT_THRESHOLD,
    L1_EPS,
    SAMPLE,  # noqa: F401 - re-exported: the size past which the selection samples
    argsort_mask,
    consensus,
    kth_largest_if_exact,
)

StateDict = dict[str, Tensor]
State = Mapping[str, Tensor]


@dataclass(frozen=True)
class Joined:
    """State-dict keys whose tensors, stacked along dim 0 in this order, are one tensor to merge."""

    keys: tuple[str, ...]


Parts = Mapping[str, "Sequence[int] | Joined"]
"""State-dict key -> row counts of the tensors stacked in it (along dim 0), or the keys it is merged with."""


def linear(
    states: Sequence[State],
    weights: Sequence[float],
    normalize: bool = True,
    *,
    keep: Collection[str] = (),
    parts: Parts | None = None,
) -> StateDict:
    """Σ wᵢ θᵢ (/ Σ wᵢ with ``normalize``): a weighted model soup."""
    _check_weights(weights, len(states), "state dicts")
    total = sum(weights)
    if normalize and total == 0:
        raise ValueError("the model weights sum to 0, so they cannot be normalised (set normalize: false)")

    def merge(tensors: list[Tensor]) -> Tensor:
        return linear_tensor(tensors, weights, normalize)

    return tensorwise(states, [f"model {i}" for i in range(len(states))], keep, merge, parts)


def linear_tensor(tensors: Sequence[Tensor], weights: Sequence[float], normalize: bool = True) -> Tensor:
    """One tensor's Σ wᵢ θᵢ (/ Σ wᵢ with ``normalize``)."""
    out = sum(w * t for w, t in zip(weights, tensors))
    return out / sum(weights) if normalize else out


def task_arithmetic(
    base: State,
    states: Sequence[State],
    weights: Sequence[float],
    scale: float = 1.0,
    *,
    keep: Collection[str] = (),
    parts: Parts | None = None,
) -> StateDict:
    """θ₀ + λ Σ wᵢ (θᵢ − θ₀), λ = ``scale``."""
    _check_weights(weights, len(states), "models besides the base")

    def merge(tensors: list[Tensor]) -> Tensor:
        b, others = tensors[0], tensors[1:]
        return b + scale * sum(w * (t - b) for w, t in zip(weights, others))

    return tensorwise([base, *states], state_names(states), keep, merge, parts)


def ties(
    base: State,
    states: Sequence[State],
    weights: Sequence[float],
    density: float,
    majority: str = "sum",
    normalize: bool = True,
    *,
    keep: Collection[str] = (),
    parts: Parts | None = None,
) -> StateDict:
    """TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint mean, added to the base."""
    _check_weights(weights, len(states), "models besides the base")
    _check_density(density)

    def merge(tensors: list[Tensor]) -> Tensor:
        b = tensors[0]
        deltas = torch.stack([_top_magnitude(t - b, density) for t in tensors[1:]])
        return b + consensus(deltas, weights, majority, normalize)

    return tensorwise([base, *states], state_names(states), keep, merge, parts)


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
    parts: Parts | None = None,
) -> StateDict:
    """DARE (Yu et al. 2024): drop task-vector entries at random, rescale to the L1 norm, sum or
    TIES-merge.

    The masks are drawn from ``generator`` tensor by tensor (part by part) in state-dict order,
    model by model, so a seeded generator gives a bitwise-reproducible merge; at density 1
    nothing is drawn."""
    _check_weights(weights, len(states), "models besides the base")
    _check_density(density)

    def merge(tensors: list[Tensor]) -> Tensor:
        b = tensors[0]
        deltas = torch.stack([_drop(t - b, density, rescale, generator) for t in tensors[1:]])
        if sign_election:
            return b + consensus(deltas, weights, "sum", normalize=False)
        return b + sum(w * d for w, d in zip(weights, deltas))

    return tensorwise([base, *states], state_names(states), keep, merge, parts)


def slerp(
    a: State, b: State, t: float, eps: float = 1e-8, *, keep: Collection[str] = (), parts: Parts | None = None
) -> StateDict:
    """Spherical interpolation from ``a`` (t = 0) to ``b`` (t = 1), tensor by tensor.

    As mergekit: the angle comes from the tensors normalised (those with a norm at most
    ``eps`` are left as they are), the interpolation weights sin((1−t)θ)/sin θ and
    sin(tθ)/sin θ apply to the tensors themselves, and nearly colinear tensors are
    interpolated linearly."""

    def merge(tensors: list[Tensor]) -> Tensor:
        return slerp_tensor(tensors[0], tensors[1], t, eps)

    return tensorwise([a, b], ["model a", "model b"], keep, merge, parts)


def slerp_tensor(v0: Tensor, v1: Tensor, t: float, eps: float = 1e-8) -> Tensor:
    """One tensor's spherical interpolation from ``v0`` (t = 0) to ``v1`` (t = 1), as :func:`slerp`
    (:func:`ssmgraph.merge.chunked.slerp_` is the same in place, without the float64 copies)."""
    u0, u1 = v0.double().flatten(), v1.double().flatten()
    u0, u1 = u0.clone() if u0.data_ptr() == v0.data_ptr() else u0, u1.clone() if u1.data_ptr() == v1.data_ptr() else u1
    n0, n1 = u0.norm(), u1.norm()
    dot = float((u0.div_(n0) if n0 > eps else u0) @ (u1.div_(n1) if n1 > eps else u1))
    del u0, u1
    if abs(dot) > DOT_THRESHOLD:
        return (1 - t) * v0 + t * v1
    theta = math.acos(dot)
    return (math.sin((1 - t) * theta) * v0 + math.sin(t * theta) * v1) / math.sin(theta)


def tensorwise(
    states: Sequence[State],
    names: Sequence[str],
    keep: Collection[str],
    merge: Callable[[list[Tensor]], Tensor],
    parts: Parts | None = None,
) -> StateDict:
    """Apply ``merge`` to each floating tensor (the first model's tensor first), to each of its
    ``parts`` separately when it has them, to the stack of a :class:`Joined` group's tensors once;
    copy the rest."""
    if not states:
        raise ValueError("nothing to merge: no state dicts")
    _check_alike(states, names)
    parts = parts or {}
    out: StateDict = {}
    for key, first in states[0].items():
        if key in out:  # merged with the group it is joined to
            continue
        if key in keep or not first.is_floating_point():
            out[key] = first.detach().clone()
            continue
        work = torch.promote_types(first.dtype, torch.float32)
        group = parts.get(key, ())
        if isinstance(group, Joined) and _joinable(states[0], group.keys, keep):
            stacks = [torch.cat([s[k].detach().to(work) for k in group.keys]) for s in states]
            pieces = merge(stacks).split([states[0][k].shape[0] for k in group.keys])
            out.update({k: piece.to(states[0][k].dtype) for k, piece in zip(group.keys, pieces)})
            continue
        tensors = [s[key].detach().to(work) for s in states]
        sizes = [] if isinstance(group, Joined) else list(group)
        if sizes and (first.dim() == 0 or sum(sizes) != first.shape[0]):
            raise ValueError(f"{key}: parts of {sizes} rows do not stack into shape {tuple(first.shape)}")
        if sizes:
            merged = torch.cat([merge(list(pieces)) for pieces in zip(*(t.split(sizes) for t in tensors))])
        else:
            merged = merge(tensors)
        out[key] = merged.to(first.dtype)
    return out


def _joinable(state: State, keys: Sequence[str], keep: Collection[str]) -> bool:
    """The group's tensors are all there, floating, merged, and stack by rows."""
    tensors = [state.get(k) for k in keys]
    return all(t is not None and k not in keep and t.is_floating_point() and t.dim() > 0 for k, t in zip(keys, tensors)) and (
        len({(t.shape[1:], t.dtype) for t in tensors}) == 1  # type: ignore[union-attr]
    )


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


def state_names(states: Sequence[State]) -> list[str]:
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
    """``delta`` with all but its k = max(1, ⌊density·n⌋) largest-magnitude entries zeroed:
    exactly k, ties at the boundary in ``torch.argsort``'s order, as mergekit's ``magnitude``."""
    if density >= 1:
        return delta
    return delta * top_magnitude_mask(delta, density)


def top_magnitude_mask(delta: Tensor, density: float) -> Tensor:
    """True at ``delta``'s k = max(1, ⌊density·n⌋) largest-magnitude entries (ties in ``torch.argsort``'s order).

    The k-th largest magnitude v is found by selection (:func:`ssmgraph.merge.chunked.kth_largest_magnitude`,
    no sort); when exactly k entries are ≥ v — no tie straddles the k-th place, so argsort's top k is
    that set whatever its order among equals — the mask is |δ| ≥ v. Otherwise (ties at the boundary,
    NaN) the top k of ``torch.argsort(descending=True)`` itself, mergekit's call."""
    k = max(1, int(density * delta.numel()))
    v = kth_largest_if_exact(delta.reshape(-1), k)
    return argsort_mask(delta, k) if v is None else delta.abs() >= v


def random_mask(shape: Sequence[int], density: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """True with probability ``density`` per entry (DARE's drop), drawn from ``generator``."""
    where = generator.device if generator is not None else device
    return (torch.rand(tuple(shape), generator=generator, device=where, dtype=torch.float64) < density).to(device)


def _drop(delta: Tensor, density: float, rescale: bool, generator: torch.Generator | None) -> Tensor:
    """Keep each entry with probability ``density``; with ``rescale`` scale the kept ones so the
    L1 norm is ``delta``'s (mergekit's ``bernoulli`` with ``rescale_norm: l1``)."""
    if density >= 1:
        return delta
    return l1_rescaled(delta, random_mask(delta.shape, density, generator, delta.device), rescale)


def l1_rescaled(delta: Tensor, mask: Tensor, rescale: bool) -> Tensor:
    """δ·m, times ‖δ‖₁ / ‖δ·m‖₁ with ``rescale`` (unless either norm is below ``L1_EPS``), as
    mergekit's ``rescale_norm: l1``: what a sparsified task vector keeps of its size."""
    masked = delta * mask
    if not rescale:
        return masked
    before, after = delta.abs().sum(), masked.abs().sum()
    return masked if before < L1_EPS or after < L1_EPS else masked * (before / after)
