"""mergekit's merge methods, tensor by tensor: their parameters (names, scopes, defaults — mergekit's)
and one function per method over one Hugging Face tensor's versions, built on ssmgraph's own
per-tensor functions (:mod:`ssmgraph.merge.sparse_methods`, :mod:`ssmgraph.merge.sphere_methods`)
and, for ``linear``, ``slerp`` and the task-arithmetic family, their in-place, chunked steps
(:mod:`ssmgraph.merge.chunked`), which hold no full-size temporaries.

Parameter values follow mergekit's rules (``mergekit/config.py`` ``evaluate_setting``): a list of
numbers is a gradient over the layers — at depth t ∈ [0, 1] the value is interpolated between
the neighbouring entries i₀ = ⌊t·(n−1)⌋ and i₀ + 1; a list of ``{filter, value}`` takes the
first entry whose ``filter`` is absent, ``*`` or a substring of the tensor's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ssmgraph.merge import chunked as C
from ssmgraph.merge import sparse_methods as S
from ssmgraph.merge import sphere_methods as P

SHARED, INPUT, NON_BASE = "shared", "input", "non_base"
REQUIRED = object()


@dataclass(frozen=True)
class MKParam:
    name: str
    kind: type
    scope: str
    default: Any = REQUIRED


@dataclass(frozen=True)
class MKMethod:
    """A mergekit method: its parameters, whether it needs / may take a base model, how many
    models it merges, and its per-tensor function ``(tensors, base_index, shared, per_input, generator)``.

    ``tensors`` is the engine's ``[inputs, *shape]`` buffer, one row per input: the function may
    overwrite it (``linear``, ``slerp`` and the task-arithmetic family merge in place, with the
    same operations per element as the out-of-place functions they stand for)."""

    name: str
    params: tuple[MKParam, ...]
    base: str  # "required", "optional", "none"
    merge: Callable[..., Tensor]
    count: int | None = None  # exactly this many models besides the base (None: any)
    minimum: int = 1

    def param(self, name: str) -> MKParam | None:
        return next((p for p in self.params if p.name == name), None)


def _gta(sparsify: str | None, consensus: bool, normalize: bool, rescale: bool) -> Callable[..., Tensor]:
    def merge(tensors: Tensor, base: int, shared: dict, per: list[dict], generator: torch.Generator | None) -> Tensor:
        if len(tensors) == 1:
            return tensors[base]
        b = tensors[base]
        others = [p for i, p in enumerate(per) if i != base]
        for delta, p in zip((t for i, t in enumerate(tensors) if i != base), others):  # the task vectors, in place
            sparsify_delta_(delta.sub_(b), sparsify, p, shared["rescale"], generator)
        weights = [p["weight"] for p in others]
        return C.combine_(tensors, base, weights, ties=consensus, normalize=shared["normalize"], lam=shared["lambda"])

    return merge


def sparsify_delta(delta: Tensor, how: str | None, p: Mapping[str, Any], rescale: bool, gen: torch.Generator | None) -> Tensor:
    """mergekit's ``sparsify``: one task vector trimmed (magnitude), dropped (random), outlier-cut or MagPruned."""
    return sparsify_delta_(delta.clone(), how, p, rescale, gen)


def sparsify_delta_(delta: Tensor, how: str | None, p: Mapping[str, Any], rescale: bool, gen: torch.Generator | None) -> Tensor:
    """:func:`sparsify_delta` in place (``delta`` is overwritten and returned)."""
    density = p.get("density", 1.0)
    if how is None or density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return delta.zero_()
    if how == "magnitude":
        return C.l1_rescale_(delta, lambda d: C.top_magnitude_(d, density), rescale)
    if how == "random":
        return C.l1_rescale_(delta, lambda d: C.random_(d, density, gen), rescale)
    if how == "magnitude_outliers":
        return C.l1_rescale_(delta, lambda d: _breadcrumbs_(d, density, p["gamma"]), rescale)
    return delta.copy_(S.magprune(delta, density, p["epsilon"], rescale, gen))


def _breadcrumbs_(delta: Tensor, density: float, gamma: float) -> Tensor:
    cut = C.outliers_cut_(delta, density, gamma)
    return delta.copy_(S.magnitude_outliers(delta, density, gamma, False)) if cut is None else cut


def _linear(tensors: Tensor, base: int, shared: dict, per: list[dict], gen: Any) -> Tensor:
    """W.linear_tensor in place: ((0 + w₀θ₀) + w₁θ₁ + …) / Σ wᵢ, accumulated in the first row."""
    weights = [p["weight"] for p in per]
    out = tensors[0].mul_(weights[0])
    for w, t in zip(weights[1:], tensors[1:]):
        out.add_(t.mul_(w))
    out.add_(0)  # Python's sum starts from 0: -0.0 becomes +0.0, as there
    return out.div_(sum(weights)) if shared["normalize"] else out


def _slerp(tensors: Tensor, base: int, shared: dict, per: list[dict], gen: Any) -> Tensor:
    return C.slerp_(tensors[base], tensors[1 - base], shared["t"])


def _passthrough(tensors: list[Tensor], base: int, shared: dict, per: list[dict], gen: Any) -> Tensor:
    scale = per[0].get("scale")
    return tensors[0] if scale is None else tensors[0] * scale


def _base_first(fn: Callable[[list[Tensor], dict, list[dict]], Tensor]) -> Callable[..., Tensor]:
    def merge(tensors: list[Tensor], base: int, shared: dict, per: list[dict], gen: Any) -> Tensor:
        order = [base, *(i for i in range(len(tensors)) if i != base)] if base >= 0 else list(range(len(tensors)))
        return fn([tensors[i] for i in order], shared, [per[i] for i in order if i != base])

    return merge


def _nuslerp(ts: list[Tensor], shared: dict, per: list[dict]) -> Tensor:
    has_base = len(ts) == 3
    return P.nuslerp_tensor(
        ts, [p["weight"] for p in per], base=has_base, row_wise=shared["nuslerp_row_wise"], flatten=shared["nuslerp_flatten"]
    )


def _multislerp(ts: list[Tensor], shared: dict, per: list[dict]) -> Tensor:
    has_base = len(ts) == len(per) + 1
    weights = [p["weight"] for p in per]
    return P.multislerp_tensor(ts, weights, base=has_base, normalize_weights=shared["normalize_weights"], eps=shared["eps"])


_GTA = (
    MKParam("int8_mask", bool, SHARED, False),
    MKParam("lambda", float, SHARED, 1.0),
    MKParam("weight", float, NON_BASE),
    MKParam("density", float, NON_BASE, 1.0),
)


def _gta_method(name: str, sparsify: str | None, consensus: bool, normalize: bool, rescale: bool) -> MKMethod:
    extra = {
        "magnitude_outliers": (MKParam("gamma", float, NON_BASE, 0.01),),
        "della_magprune": (MKParam("epsilon", float, NON_BASE, 0.15),),
    }
    params = (
        MKParam("normalize", bool, SHARED, normalize),
        MKParam("rescale", bool, SHARED, rescale),
        *_GTA,
        *extra.get(sparsify or "", ()),
    )
    return MKMethod(name, params, "required", _gta(sparsify, consensus, normalize, rescale))


METHODS: dict[str, MKMethod] = {
    m.name: m
    for m in (
        MKMethod("linear", (MKParam("weight", float, INPUT), MKParam("normalize", bool, SHARED, True)), "none", _linear),
        MKMethod("slerp", (MKParam("t", float, SHARED),), "required", _slerp, count=1),
        MKMethod("passthrough", (MKParam("scale", float, INPUT, None),), "none", _passthrough),
        _gta_method("task_arithmetic", None, False, False, False),
        _gta_method("ties", "magnitude", True, True, False),
        _gta_method("dare_ties", "random", True, False, True),
        _gta_method("dare_linear", "random", False, False, True),
        _gta_method("breadcrumbs", "magnitude_outliers", False, False, False),
        _gta_method("breadcrumbs_ties", "magnitude_outliers", True, False, False),
        _gta_method("della", "della_magprune", True, True, True),
        _gta_method("della_linear", "della_magprune", False, False, True),
        MKMethod(
            "model_stock",
            (MKParam("filter_wise", bool, SHARED, False),),
            "required",
            _base_first(lambda ts, s, p: P.model_stock_tensor(ts, s["filter_wise"])),
            minimum=2,
        ),
        MKMethod(
            "sce",
            (MKParam("int8_mask", bool, SHARED, False), MKParam("select_topk", float, SHARED, 1.0)),
            "required",
            _base_first(lambda ts, s, p: S.sce_tensor(ts, s["select_topk"])),
        ),
        MKMethod(
            "nearswap",
            (MKParam("t", float, SHARED),),
            "required",
            _base_first(lambda ts, s, p: P.nearswap_tensor(ts[0], ts[1], s["t"])),
            count=1,
        ),
        MKMethod(
            "karcher",
            (MKParam("max_iter", int, SHARED, 10), MKParam("tol", float, SHARED, 1e-5)),
            "none",
            _base_first(lambda ts, s, p: P.karcher_tensor(ts, s["max_iter"], s["tol"])),
        ),
        MKMethod(
            "nuslerp",
            (
                MKParam("weight", float, NON_BASE),
                MKParam("nuslerp_flatten", bool, SHARED, True),
                MKParam("nuslerp_row_wise", bool, SHARED, False),
            ),
            "optional",
            _base_first(_nuslerp),
            count=2,
        ),
        MKMethod(
            "multislerp",
            (
                MKParam("weight", float, NON_BASE),
                MKParam("normalize_weights", bool, SHARED, True),
                MKParam("eps", float, SHARED, 1e-8),
            ),
            "optional",
            _base_first(_multislerp),
        ),
    )
}


def is_setting(value: Any) -> bool:
    """A scalar, a gradient (list of scalars) or conditional entries ({filter, value})."""
    if isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, dict):
        return set(value) <= {"filter", "value"} and "value" in value and is_setting(value["value"])
    return isinstance(value, list) and (
        all(isinstance(v, (bool, int, float, str)) for v in value) or all(isinstance(v, dict) and is_setting(v) for v in value)
    )


def validate(param: MKParam, value: Any) -> Any:
    """A scalar as the parameter's kind (mergekit's pydantic coercion, strictly)."""
    if param.kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{param.name}: expected true or false, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{param.name}: expected a number, got {value!r}") from None
        else:
            raise ValueError(f"{param.name}: expected a number, got {value!r}")  # noqa: TRY004 - a config value, reported as such
    return int(value) if param.kind is int else float(value)


def evaluate(param: MKParam, setting: Any, tensor: str, t: float) -> Any:
    """mergekit's ``evaluate_setting``: a setting's value for ``tensor`` at depth ``t`` (None: no entry applies)."""
    if isinstance(setting, dict):
        setting = [setting]
    if not isinstance(setting, list):
        return validate(param, setting)
    if not setting:
        return None
    if all(not isinstance(e, dict) for e in setting):
        values = [validate(param, e) for e in setting]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return values[int(t * (len(values) - 1))]
        scaled = t * (len(values) - 1)
        i0 = int(scaled)
        i1 = min(len(values) - 1, i0 + 1)
        frac = scaled - i0
        return validate(param, (1 - frac) * values[i0] + frac * values[i1])
    for cond in setting:
        flt = cond.get("filter")
        if flt is None or flt == "*" or (tensor and str(flt) in tensor):
            return evaluate(param, cond["value"], tensor, t)
    return None


def resolve(param: MKParam, scopes: Sequence[Mapping[str, Any] | None], tensor: str, t: float) -> Any:
    """The first scope (highest precedence first) whose setting applies; else the default."""
    for scope in scopes:
        if scope and param.name in scope:
            value = evaluate(param, scope[param.name], tensor, t)
            if value is not None:
                return value
    if param.default is REQUIRED:
        raise KeyError(param.name)
    return param.default
