"""Typed records that plugins return from their hooks (contract: docs/plugins.md).

A block plugin returns :class:`BlockSpec` records from ``ssmgraph_blocks()``. A spec says
everything the compiler needs *before* any tensor exists: the parameter schema (checked
against the blueprint), the input ports, a shape rule, capabilities, and a factory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ssmgraph.registry.params import Param, param_problems
from ssmgraph.registry.references import is_reference, resolve

if TYPE_CHECKING:  # typing only: the registry (and so `ssmgraph --help`) must not import torch
    from torch import nn

ROLES = ("embed", "mix", "ffn", "norm", "head", "struct", "stitch")
CONTRACT_VERSION = 1
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)?$")

Dim = int | str
"""A tensor dimension: a concrete size, or a symbol such as ``"batch"`` or ``"seq"``."""


@dataclass(frozen=True)
class TensorType:
    """The static type of an edge: symbolic shape and dtype kind (``"int"`` or ``"float"``)."""

    shape: tuple[Dim, ...]
    dtype: str = "float"

    @property
    def dim(self) -> int:
        """The feature (last) dimension; raises ShapeError when it is symbolic."""
        last = self.shape[-1] if self.shape else None
        if not isinstance(last, int):
            raise ShapeError(f"expected a feature dimension, got a tensor of shape {self}")
        return last

    def with_dim(self, dim: int) -> TensorType:
        """Same shape with the last dimension replaced by ``dim`` (float dtype)."""
        return TensorType(tuple(self.shape[:-1]) + (dim,), "float")

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


class ShapeError(ValueError):
    """Raised by a shape rule when its inputs do not fit; the message is shown to the user."""


@dataclass(frozen=True)
class PermAxis:
    """Where a permutation space lies in one parameter of a block.

    Along ``axis`` of ``param`` (a state-dict name inside the block's module), from index
    ``start``, lie ``chunks`` equal chunks (LSTM's four gates, Mamba's x and z halves), each
    holding the space's units in order, ``group`` contiguous entries per unit (a head's rows).
    A permutation moves whole units, the same way in every chunk.
    """

    param: str
    axis: int
    group: int = 1
    chunks: int = 1
    start: int = 0


def rows_of(module: str, bias: bool = True) -> tuple[PermAxis, ...]:
    """The output rows of a linear layer (or the entries of a norm's affine) at ``module``
    ("" for the block's own parameters): ``weight`` axis 0 and, with ``bias``, the bias."""
    prefix = f"{module}." if module else ""
    weight = PermAxis(f"{prefix}weight", 0)
    return (weight, PermAxis(f"{prefix}bias", 0)) if bias else (weight,)


INPUT_SPACE = "<input>"
"""Reserved :class:`PermSpace` name: the axes that carry the block's input feature dimension
(``"<input:PORT>"`` names one port of a multi-input block)."""
OUTPUT_SPACE = "<output>"
"""Reserved :class:`PermSpace` name: the axes that carry the block's output feature dimension."""
THROUGH_SPACE = "<through>"
"""Reserved :class:`PermSpace` name: the block is equivariant — its inputs and its output share
one feature space (a norm, a residual add), and these axes (possibly none) carry it."""


def input_space(port: str | None = None) -> str:
    """The reserved name of a block's input feature space (of one ``port``)."""
    return INPUT_SPACE if port is None else f"<input:{port}>"


@dataclass(frozen=True)
class PermSpace:
    """Units inside a block whose order its function does not depend on (hidden units, heads,
    channels, SSM modes): permuting them alike on every axis of ``axes`` leaves the block's
    outputs unchanged, so models can be aligned along them before a merge
    (:mod:`ssmgraph.merge.permute`).

    Reserved names declare how the block treats the feature dimension of its inputs and
    output instead (``size`` is that dimension): ``"<input>"`` / ``"<input:PORT>"`` (the axes
    that read the input's features: permuting them together with the input's last dimension
    leaves the output unchanged), ``"<output>"`` (the axes that write the output's features:
    permuting them permutes the output's last dimension alike) and ``"<through>"`` (input and
    output share one feature space, as in a norm or a residual add). A port the block declares
    none of these for keeps a fixed feature order: the model-level spaces
    (the residual stream) stop there."""

    name: str
    size: int
    axes: tuple[PermAxis, ...]
    doc: str = ""


PermRule = Callable[..., Sequence[PermSpace]]
Capability = bool | Callable[[Mapping[str, Any]], bool]
ShapeRule = Callable[..., TensorType]
Factory = Callable[..., "nn.Module"]


@dataclass(frozen=True)
class Capabilities:
    """What a configured block can do.

    causal: output at t depends only on the (first) input at positions <= t; further inputs
        may be context read whole (cross-attention's memory).
    bidirectional: output at t may depend on later positions.
    step: the module has ``init_state(batch, device=, dtype=)`` and ``step(x_t, state)``
        (x_t of shape B×D) for O(1)-per-token recurrent decoding.
    pointwise: each position is processed independently (norm, FFN, embedding lookup,
        heads): a step is the forward on a length-1 sequence.
    """

    causal: bool
    bidirectional: bool
    step: bool
    pointwise: bool


@dataclass(frozen=True)
class BlockSpec:
    """A block kind as the registry knows it.

    ``shape(in_types, **args)`` maps input types to the output type (raise ShapeError on
    a mismatch) and ``factory(in_types, **args)`` builds the module; both receive every
    parameter, defaults filled in. ``inputs`` names the ports; with ``variadic`` the block
    takes two or more tensors in the single port list order.
    """

    name: str
    role: str
    doc: str
    params: tuple[Param, ...]
    factory: Factory
    shape: ShapeRule
    inputs: tuple[str, ...] = ("x",)
    variadic: bool = False
    causal: Capability = True
    bidirectional: Capability = False
    step: Capability = False
    pointwise: Capability = False
    reference: str = ""
    contract: int = CONTRACT_VERSION
    perm_spaces: PermRule | None = None
    """``perm_spaces(in_types, **args)`` lists the block's internal permutation spaces for one
    configuration (called like ``shape`` and ``factory``), and with the reserved names
    ``"<input>"``, ``"<output>"``, ``"<through>"`` the axes that carry its input and output
    features (see :class:`PermSpace`); None: it declares none, and permutation alignment
    leaves the block, and the feature spaces it reads and writes, as they are."""
    examples: tuple[Mapping[str, Any], ...] = ()
    """Argument sets the conformance kit (``ssmgraph check``) builds the block with, defaults
    filled in; needed when a parameter is required, useful to cover variants."""
    plugin: str = ""
    """Filled in by the registry: the plugin (distribution) that provided the spec."""

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params if not p.required}

    def capabilities(self, args: Mapping[str, Any]) -> Capabilities:
        def get(c: Capability) -> bool:
            return bool(c(args) if callable(c) else c)

        return Capabilities(
            causal=get(self.causal),
            bidirectional=get(self.bidirectional),
            step=get(self.step),
            pointwise=get(self.pointwise),
        )

    def validate(self) -> list[str]:
        """Problems that make this record malformed (empty when it is well-formed)."""
        problems = []
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            problems.append(f"name {self.name!r} is not of the form 'role.impl' (lowercase)")
        if self.role not in ROLES:
            problems.append(f"role {self.role!r} is not one of {', '.join(ROLES)}")
        if self.contract != CONTRACT_VERSION:
            problems.append(f"contract {self.contract} is not the supported {CONTRACT_VERSION}")
        if not callable(self.factory) or not callable(self.shape):
            problems.append("factory and shape must be callables")
        if self.perm_spaces is not None and not callable(self.perm_spaces):
            problems.append("perm_spaces must be a callable (in_types, **args) -> PermSpace records, or None")
        if not self.doc:
            problems.append("doc is empty")
        problems.extend(param_problems(self.params))
        if not self.inputs:
            problems.append("a block takes at least one input port")
        return problems

    def to_json(self) -> dict[str, Any]:
        caps = {
            k: (v if isinstance(v, bool) else "depends on args")
            for k, v in (
                ("causal", self.causal),
                ("bidirectional", self.bidirectional),
                ("step", self.step),
                ("pointwise", self.pointwise),
            )
        }
        return {
            "name": self.name,
            "role": self.role,
            "plugin": self.plugin,
            "doc": self.doc,
            "reference": self.reference,
            "inputs": list(self.inputs),
            "variadic": self.variadic,
            "capabilities": caps,
            "params": [p.to_json() for p in self.params],
        }


def same_as_input(in_types: Sequence[TensorType], **_: Any) -> TensorType:
    """Shape rule of blocks that map B×L×D to B×L×D (mixers, norms, FFNs)."""
    (x,) = in_types
    if x.dtype != "float":
        raise ShapeError(f"expects float features, got {x} (token ids need an embed block first)")
    x.dim  # noqa: B018 - raises a ShapeError for a symbolic feature dim
    return x


@dataclass(frozen=True)
class TaskSpec:
    """A training task as the registry knows it (hook ``ssmgraph_tasks``).

    ``factory(**options)`` builds a :class:`ssmgraph.train.tasks.base.Task`; ``params`` is the
    schema of the options (checked like block parameters, with located errors)."""

    name: str
    doc: str
    params: tuple[Param, ...]
    factory: Callable[..., Any]
    reference: str = ""
    plugin: str = ""

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params if not p.required}

    def validate(self) -> list[str]:
        problems = []
        if not isinstance(self.name, str) or not re.match(r"^[a-z][a-z0-9_]*$", self.name):
            problems.append(f"task name {self.name!r} must be lowercase letters, digits and _")
        if not self.doc:
            problems.append("doc is empty")
        if not callable(self.factory):
            problems.append("factory must be callable")
        problems.extend(param_problems(self.params))
        return problems

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "plugin": self.plugin,
            "doc": self.doc,
            "reference": self.reference,
            "params": [p.to_json() for p in self.params],
        }


COMPATIBILITY = ("identical", "same_shape", "alignable", "heterogeneous")
"""How alike the models of a merge are, from most to least: the same blueprint; the same
state-dict names and shapes; the same graph of blocks up to widths; anything else."""


@dataclass(frozen=True)
class MergeMethodSpec:
    """A merge method as the registry knows it (hook ``ssmgraph_merge_methods``).

    ``run(context)`` does the merge: it receives a :class:`ssmgraph.merge.context.MergeContext`
    (the loaded models, the method's checked parameters, the data, the output folder) and
    returns a :class:`ssmgraph.merge.context.MergeResult`. ``run`` is the function or, so
    that registering the method imports none of its machinery, its ``"package.module:function"``
    reference (imported by :meth:`runner` when the method runs). ``needs`` is the least alike
    the models may be (one of :data:`COMPATIBILITY`): ``same_shape`` methods also accept
    identical blueprints, ``heterogeneous`` ones accept anything."""

    name: str
    doc: str
    params: tuple[Param, ...]
    run: Callable[..., Any] | str
    needs: str = "identical"
    min_models: int = 2
    max_models: int | None = None
    data: bool = False
    """Whether the method needs a ``data:`` task (probing or training)."""
    reference: str = ""
    plugin: str = ""

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params if not p.required}

    def runner(self) -> Callable[..., Any]:
        """The function that does the merge (imported now when ``run`` is a reference)."""
        if callable(self.run):
            return self.run
        return resolve(self.run, f"merge method {self.name!r} ({self.plugin or 'unregistered'})")

    def accepts(self, compatibility: str) -> bool:
        return COMPATIBILITY.index(compatibility) <= COMPATIBILITY.index(self.needs)

    def validate(self) -> list[str]:
        problems = []
        if not isinstance(self.name, str) or not re.match(r"^[a-z][a-z0-9_]*$", self.name):
            problems.append(f"merge method name {self.name!r} must be lowercase letters, digits and _")
        if not self.doc:
            problems.append("doc is empty")
        if not callable(self.run) and not is_reference(self.run):
            problems.append(f"run must be a function or a 'package.module:function' reference, got {self.run!r}")
        if self.needs not in COMPATIBILITY:
            problems.append(f"needs {self.needs!r} is not one of {', '.join(COMPATIBILITY)}")
        problems.extend(param_problems(self.params))
        return problems

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "plugin": self.plugin,
            "doc": self.doc,
            "needs": self.needs,
            "data": self.data,
            "reference": self.reference,
            "params": [p.to_json() for p in self.params],
        }
