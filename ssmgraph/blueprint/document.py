"""The typed form of a blueprint, after parameters, expressions and fragments are resolved.

These records are what the graph compiler reads. ``Blueprint.to_dict()`` writes them back
as a *resolved* blueprint in the same format (no expressions, fragments inlined), which is
what a saved model carries beside its weights; ``Blueprint.from_dict()`` reads such a mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssmgraph.blueprint.expr import escape
from ssmgraph.blueprint.files import blueprint_dirs
from ssmgraph.blueprint.keypaths import marked
from ssmgraph.blueprint.yamlsafe import plain
from ssmgraph.errors import Mark

FORMAT_VERSION = 1


def as_written(value: Any) -> Any:
    """Resolved values as plain data that reads back equal: a string starting with ``$``
    (from ``$$`` in the source) is escaped again, or reloading would evaluate it."""
    if isinstance(value, dict):
        return {k: as_written(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_written(v) for v in value]
    return escape(value)


@dataclass
class Ref:
    """A reference to a value: an input, a node, ``stack.3.node`` or ``group.node``."""

    target: str
    mark: Mark | None
    port: str | None = None
    """The block input port this reference feeds (None: positional)."""


@dataclass
class Body:
    """A sub-graph: the body of a ``repeat`` stack or of a group node (``use:``)."""

    inputs: list[str]
    nodes: dict[str, NodeDecl]
    outputs: dict[str, Ref]
    mark: Mark | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": list(self.inputs),
            "nodes": {name: node.to_dict() for name, node in self.nodes.items()},
            "outputs": {name: ref.target for name, ref in self.outputs.items()},
        }


@dataclass
class NodeDecl:
    """One entry of ``nodes:``: a block, a second call site of a block (``share``), or a
    sub-graph instanced once (``body``/``use``) or ``repeat`` times."""

    name: str
    mark: Mark | None
    inputs: list[Ref] = field(default_factory=list)
    block: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    share: Ref | None = None
    tie: dict[str, Ref] = field(default_factory=dict)
    body: Body | None = None
    repeat: int | None = None
    carry: str | None = None
    at: dict[int, Body] = field(default_factory=dict)
    share_weights: bool = False
    doc: str = ""
    marks: dict[str, Mark] = field(default_factory=dict)
    """Marks of individual fields (``block``, ``args.heads``, ...) for precise errors."""

    def mark_of(self, key: str) -> Mark | None:
        return self.marks.get(key) or self.mark

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.inputs:
            if any(r.port for r in self.inputs):
                out["in"] = {r.port: r.target for r in self.inputs}
            elif len(self.inputs) == 1:
                out["in"] = self.inputs[0].target
            else:
                out["in"] = [r.target for r in self.inputs]
        if self.block is not None:
            out["block"] = self.block
        if self.args:
            out["args"] = as_written(self.args)
        if self.share is not None:
            out["share"] = self.share.target
        if self.tie:
            out["tie"] = {k: r.target for k, r in self.tie.items()}
        if self.repeat is not None:
            out["repeat"] = self.repeat
            if self.carry:
                out["carry"] = self.carry
            if self.share_weights:
                out["share_weights"] = True
        if self.body is not None:
            out["body"] = self.body.to_dict()
        if self.at:
            out["at"] = {i: {"body": b.to_dict()} for i, b in sorted(self.at.items())}
        if self.doc:
            out["doc"] = self.doc
        return out


@dataclass
class InputDecl:
    name: str
    dtype: str  # "int" (token ids) or "float" (features)
    shape: tuple[int | str, ...]
    mark: Mark | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": "int64" if self.dtype == "int" else "float32", "shape": list(self.shape)}


@dataclass
class TapDecl:
    """Named intermediate features, optionally projected by a learnable block."""

    name: str
    at: str
    mark: Mark | None = None
    project_block: str | None = None
    project_args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"at": self.at}
        if self.project_block:
            out["project"] = {"block": self.project_block, "args": as_written(self.project_args)}
        return out


@dataclass
class ModelView:
    """A named view over a multi-model blueprint: the outputs and taps it keeps."""

    name: str
    outputs: list[str]
    taps: list[str]
    mark: Mark | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"outputs": list(self.outputs), "taps": list(self.taps)}


@dataclass
class Blueprint:
    """A resolved blueprint: what :func:`~ssmgraph.blueprint.load_blueprint` and :meth:`from_dict` give."""

    name: str
    source: str
    params: dict[str, Any]
    inputs: dict[str, InputDecl]
    body: Body
    taps: dict[str, TapDecl] = field(default_factory=dict)
    models: dict[str, ModelView] = field(default_factory=dict)
    align: list[Any] = field(default_factory=list)
    doc: str = ""

    @classmethod
    def from_dict(
        cls,
        mapping: Mapping[str, Any],
        *,
        name: str = "blueprint",
        source: str = "<dict>",
        overrides: Mapping[str, Any] | None = None,
    ) -> Blueprint:
        """Resolve a blueprint given as plain Python data, as a file would be read (what
        :meth:`to_dict` writes reads back equal). ``name`` names a blueprint whose mapping has no
        ``name:``; errors name ``source`` and the key path of the value they are about
        (``<dict>:nodes.mix.args.heads``). ``use:`` paths start from the working directory."""
        # Imported here to break a cycle: the resolver builds these records, so it imports this module.
        from ssmgraph.blueprint.resolver import resolve

        if not isinstance(mapping, Mapping):
            raise TypeError(f"Blueprint.from_dict takes a mapping, got {type(mapping).__name__}")
        return resolve(marked(mapping, source), source, Path.cwd(), overrides or {}, blueprint_dirs(), name=name)

    @property
    def nodes(self) -> dict[str, NodeDecl]:
        return self.body.nodes

    @property
    def outputs(self) -> dict[str, Ref]:
        return self.body.outputs

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ssmgraph": FORMAT_VERSION, "name": self.name}
        if self.doc:
            out["doc"] = self.doc
        if self.params:
            out["params"] = as_written(self.params)
        out["inputs"] = {name: decl.to_dict() for name, decl in self.inputs.items()}
        out["nodes"] = {name: node.to_dict() for name, node in self.nodes.items()}
        out["outputs"] = {name: ref.target for name, ref in self.outputs.items()}
        if self.taps:
            out["taps"] = {name: tap.to_dict() for name, tap in self.taps.items()}
        if self.models:
            out["models"] = {name: view.to_dict() for name, view in self.models.items()}
        if self.align:
            out["align"] = plain(self.align)
        return out
