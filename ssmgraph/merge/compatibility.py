"""How alike the models of a merge are, checked before anything is merged, and which
methods that lets run: identical, same-shape, alignable, heterogeneous."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

from ssmgraph.graph.model import CompiledModel
from ssmgraph.merge.models import LoadedModel, blueprint_of
from ssmgraph.registry.plugins import get_registry


class Compatibility(str, Enum):
    """The classes from most to least alike: the same blueprint; the same state-dict names,
    shapes and ties; the same graph of blocks up to widths; anything else. The values are
    what a method spec's ``needs`` and report.json say (``same_shape``)."""

    IDENTICAL = "identical"
    SAME_SHAPE = "same_shape"
    ALIGNABLE = "alignable"
    HETEROGENEOUS = "heterogeneous"

    def __str__(self) -> str:
        return self.value  # formats as the plain string it stands for, on every Python version

    @property
    def label(self) -> str:
        """How messages and reports spell it: ``same-shape``."""
        return self.value.replace("_", "-")

    def within(self, least_alike: str) -> bool:
        """Whether models of this class are at least as alike as ``least_alike`` (a class or a
        method's ``needs``): what a method that needs ``least_alike`` accepts."""
        order = list(Compatibility)
        return order.index(self) <= order.index(Compatibility(least_alike))


def classify(models: Sequence[LoadedModel]) -> tuple[Compatibility, str]:
    """The least-alike class over all pairs with the first model, and why."""
    first = models[0]
    worst, reason = Compatibility.IDENTICAL, "all models share one blueprint"
    for other in models[1:]:
        cls, why = _pair_class(first, other)
        if not cls.within(worst):
            worst, reason = cls, why
    return worst, reason


def methods_for(compatibility: Compatibility) -> list[str]:
    """The installed merge methods that accept models of ``compatibility``."""
    return sorted(name for name, spec in get_registry().merge_methods.items() if spec.accepts(compatibility))


def _pair_class(a: LoadedModel, b: LoadedModel) -> tuple[Compatibility, str]:
    if _plain_blueprint(a.model) == _plain_blueprint(b.model):
        return Compatibility.IDENTICAL, "the same blueprint"
    if _state_shapes(a.model) == _state_shapes(b.model):
        if a.model.tied != b.model.tied:  # one tensor in one model is two in the other: no tensor-wise average
            ties = {m.name: ", ".join(f"{k} to {v}" for k, v in sorted(m.model.tied.items())) or "nothing" for m in (a, b)}
            return (
                Compatibility.HETEROGENEOUS,
                f"models {a.name!r} and {b.name!r} tie different weights ({a.name!r} ties {ties[a.name]}; {b.name!r} ties {ties[b.name]})",
            )
        return (
            Compatibility.SAME_SHAPE,
            f"models {a.name!r} and {b.name!r} have different blueprints but the same state-dict names and shapes",
        )
    sa, sb = _structure(a.model), _structure(b.model)
    if sa == sb:
        return Compatibility.ALIGNABLE, f"models {a.name!r} and {b.name!r} have the same blocks but different widths"
    blocks_b = dict(sb)
    for path, block in sa:  # first the same place holding different blocks, then extra places
        if path in blocks_b and blocks_b[path] != block:
            return (
                Compatibility.HETEROGENEOUS,
                f"models {a.name!r} ({block} at {path}) and {b.name!r} ({blocks_b[path]} at {path}) differ",
            )
    only_a = [f"{block} at {path}" for path, block in sa if path not in blocks_b]
    only_b = [f"{block} at {path}" for path, block in sb if path not in dict(sa)]
    where = f"only {a.name!r} has {only_a[0]}" if only_a else f"only {b.name!r} has {only_b[0]}"
    return Compatibility.HETEROGENEOUS, f"models {a.name!r} ({len(sa)} blocks) and {b.name!r} ({len(sb)} blocks) differ: {where}"


def _plain_blueprint(model: CompiledModel) -> dict[str, Any]:
    data = blueprint_of(model)
    for key in ("name", "doc"):
        data.pop(key, None)
    return data


def _state_shapes(model: CompiledModel) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _structure(model: CompiledModel) -> list[tuple[str, str]]:
    return [(info.path, info.block) for info in model.nodes.values()]
