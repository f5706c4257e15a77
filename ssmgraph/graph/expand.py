"""Blueprint → a flat networkx DAG with one node per block call.

Repeat stacks are unrolled (``blocks.0.mix`` … ``blocks.3.mix``), groups are inlined under
their name, references are resolved to value ids (an input name or a node path), and
``share``/``tie`` targets are located. Nodes may reference nodes written later in the
file; the graph, not the file order, decides the order of evaluation.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

import networkx as nx

from ssmgraph.blueprint.document import Blueprint, Body, NodeDecl, Ref
from ssmgraph.errors import Collector, Mark, did_you_mean
from ssmgraph.graph.expanded import Expanded, GraphNode, TapInstance, follow_chain


class _Entry:
    """What a name means in a scope: a value, or a sub-graph (group or stack)."""

    def __init__(
        self,
        value: str | None = None,
        layers: list[_Scope] | None = None,
        inner: _Scope | None = None,
        decl: NodeDecl | None = None,
    ):
        self.value = value
        self.layers = layers
        self.inner = inner
        self.decl = decl


class _Scope:
    def __init__(self, expander: _Expander, body: Body, prefix: str, module_prefix: str, bindings: dict[str, str]):
        self.expander = expander
        self.body = body
        self.prefix = prefix
        self.module_prefix = module_prefix
        self.entries: dict[str, _Entry] = {name: _Entry(value=value) for name, value in bindings.items()}
        self.in_progress: set[str] = set()

    def qualify(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def module(self, name: str) -> str:
        return f"{self.module_prefix}.{name}" if self.module_prefix else name

    def entry(self, name: str, mark: Mark | None) -> _Entry | None:
        if name in self.entries:
            return self.entries[name]
        decl = self.body.nodes.get(name)
        if decl is None:
            return None
        if name in self.in_progress:
            self.expander.errors.add(
                "E211", f"node {name!r} depends on itself through a sub-graph", mark or decl.mark, self.qualify(name)
            )
            return _Entry(decl=decl)
        self.in_progress.add(name)
        try:
            entry = self.expander.expand_node(self, decl)
        finally:
            self.in_progress.discard(name)
        self.entries[name] = entry
        return entry

    def expand_all(self) -> None:
        for name in self.body.nodes:
            self.entry(name, None)


class _Expander:
    def __init__(self, blueprint: Blueprint, errors: Collector):
        self.blueprint = blueprint
        self.errors = errors
        self.graph = nx.DiGraph()
        self.nodes: dict[str, GraphNode] = {}
        self.pending: list[tuple[GraphNode, _Scope, list[Ref]]] = []
        self.pending_ties: list[tuple[GraphNode, _Scope, str, Ref]] = []
        self.pending_shares: list[tuple[GraphNode, _Scope, Ref]] = []

    # ---- references ---------------------------------------------------------------------
    def resolve(self, scope: _Scope, ref: Ref, path: str, *, quiet: bool = False) -> tuple[str | None, _Entry | None]:
        """A reference (``x``, ``group.node``, ``stack.3.node``) → (value id, entry).

        Reports E210 unless ``quiet``."""
        parts = ref.target.split(".")
        where, entry, i = scope, scope.entry(parts[0], ref.mark), 1
        while entry is not None and i < len(parts):
            walked = ".".join(parts[:i])
            if entry.layers is not None:
                try:
                    where = entry.layers[int(parts[i])]
                except (ValueError, IndexError):
                    return self._miss(
                        f"{walked!r} is a stack of {len(entry.layers)} layers; {parts[i]!r} is not a layer index",
                        ref,
                        path,
                        quiet,
                        f"e.g. {walked}.0.<node> or {walked}.-1.<node>",
                    )
                if i + 1 == len(parts):
                    return self._miss(
                        f"{ref.target!r} names a layer; name a node inside it",
                        ref,
                        path,
                        quiet,
                        f"e.g. {ref.target}.{next(iter(where.body.nodes), 'node')}",
                    )
                entry, i = where.entry(parts[i + 1], ref.mark), i + 2
            elif entry.inner is not None:
                where = entry.inner
                entry, i = where.entry(parts[i], ref.mark), i + 1
            else:
                return self._miss(
                    f"{walked!r} is a block, not a sub-graph: {ref.target!r} cannot look inside it", ref, path, quiet
                )
        if entry is None:
            known = list(where.entries) + list(where.body.nodes)
            return self._miss(
                f"no input or node named {ref.target!r}", ref, path, quiet, did_you_mean(parts[min(i, len(parts)) - 1], known)
            )
        return self._value_of(entry, ref, path, quiet), entry

    def _miss(self, message: str, ref: Ref, path: str, quiet: bool, help: str = "") -> tuple[None, None]:
        if not quiet:
            self.errors.add("E210", message, ref.mark, path, help)
        return None, None

    def _value_of(self, entry: _Entry, ref: Ref, path: str, quiet: bool) -> str | None:
        if entry.value is None and not quiet and (entry.layers is not None or entry.inner is not None):
            self.errors.add(
                "E210",
                f"{ref.target!r} is a sub-graph with several outputs; name one of its nodes",
                ref.mark,
                path,
                f"e.g. {ref.target}.<node>",
            )
        return entry.value

    # ---- expansion ----------------------------------------------------------------------
    def expand_node(self, scope: _Scope, decl: NodeDecl) -> _Entry:
        path = scope.qualify(decl.name)
        if decl.body is not None and decl.repeat is not None:
            return self.expand_stack(scope, decl, path)
        if decl.body is not None:
            bindings = self.bind(scope, decl, decl.body, path, carry=None)
            if bindings is None:
                return _Entry(decl=decl)
            inner = _Scope(self, decl.body, path, scope.module(decl.name), bindings)
            inner.expand_all()
            value = None
            if len(decl.body.outputs) == 1:
                (out_ref,) = decl.body.outputs.values()
                value, _ = self.resolve(inner, out_ref, f"{path}.outputs")
            return _Entry(value=value, inner=inner, decl=decl)
        node = GraphNode(path=path, decl=decl, block=decl.block or "", args=dict(decl.args), module_path=scope.module(decl.name))
        self.nodes[path] = node
        self.graph.add_node(path)
        self.pending.append((node, scope, decl.inputs))
        for attr, ref in decl.tie.items():
            self.pending_ties.append((node, scope, attr, ref))
        if decl.share is not None:
            self.pending_shares.append((node, scope, decl.share))
        return _Entry(value=path, decl=decl)

    def bind(self, scope: _Scope, decl: NodeDecl, body: Body, path: str, carry: str | None) -> dict[str, str] | None:
        """Body input name → value id, from the node's ``in`` (by name, positional, or the carry)."""
        refs = decl.inputs
        if any(r.port for r in refs):
            pairs = [(ref.port, ref) for ref in refs]
            for port, ref in pairs:
                if port not in body.inputs:
                    self.errors.add(
                        "E210", f"the body has no input {port!r}", ref.mark, f"{path}.in", did_you_mean(str(port), body.inputs)
                    )
        elif len(refs) == 1 and (carry or len(body.inputs) == 1):
            pairs = [(carry or body.inputs[0], refs[0])]
        elif len(refs) == len(body.inputs):
            pairs = list(zip(body.inputs, refs))
        else:
            pairs = []
        bindings: dict[str, str] = {}
        failed = False
        for port, ref in pairs:
            if port in body.inputs:
                value, _ = self.resolve(scope, ref, f"{path}.in")
                failed |= value is None
                if value is not None:
                    bindings[str(port)] = value
        missing = [name for name in body.inputs if name not in bindings]
        if missing and not failed:
            self.errors.add(
                "E210",
                f"body inputs {', '.join(missing)} are not bound",
                decl.mark_of("in"),
                f"{path}.in",
                f"bind them by name: in: {{{', '.join(f'{m}: <node>' for m in body.inputs)}}}",
            )
        return bindings if not missing else None

    def expand_stack(self, scope: _Scope, decl: NodeDecl, path: str) -> _Entry:
        assert decl.body is not None and decl.repeat is not None
        if decl.share_weights and decl.at:
            self.errors.add(
                "E213",
                "share_weights reuses one body for every layer, so per-index overrides (at:) cannot apply",
                decl.mark_of("at"),
                f"{path}.at",
            )
        bindings = self.bind(scope, decl, decl.body, path, carry=decl.carry)
        if bindings is None or decl.carry is None:
            return _Entry(decl=decl)
        layers: list[_Scope] = []
        for i in range(decl.repeat):
            body = decl.at.get(i, decl.body)
            if decl.carry not in body.inputs or decl.carry not in body.outputs:
                self.errors.add(
                    "E213",
                    f"layer {i}'s body lacks the carried input/output {decl.carry!r}",
                    decl.mark_of("at"),
                    f"{path}.at.{i}",
                )
                return _Entry(decl=decl)
            module_prefix = f"{scope.module(decl.name)}.{0 if decl.share_weights else i}"
            layer = _Scope(self, body, f"{path}.{i}", module_prefix, dict(bindings))
            layer.expand_all()
            layers.append(layer)
            carried, _ = self.resolve(layer, body.outputs[decl.carry], f"{path}.{i}.outputs.{decl.carry}")
            if carried is None:
                return _Entry(layers=layers, decl=decl)
            bindings[decl.carry] = carried
        return _Entry(value=bindings[decl.carry], layers=layers, decl=decl)

    # ---- second pass: edges, shares, ties ------------------------------------------------
    def connect(self) -> None:
        for node, scope, refs in self.pending:
            for ref in refs:
                value, _ = self.resolve(scope, ref, f"{node.path}.in")
                if value is None:
                    node.broken = True
                else:
                    node.inputs.append((ref.port, value))
                    self.graph.add_edge(value, node.path)
        self.connect_shares()
        for node, scope, attr, ref in self.pending_ties:
            self.tie(node, scope, attr, ref)

    def connect_shares(self) -> None:
        """Point every ``share`` node at the block call that owns the module.

        All targets are resolved before any chain is followed, so ``a share b, b share c``
        works in any file order; a chain that returns to itself is E230."""
        direct: dict[str, GraphNode] = {}
        for node, scope, ref in self.pending_shares:
            value, _ = self.resolve(scope, ref, f"{node.path}.share")
            target = self.nodes.get(value or "")
            if value is not None and target is None:
                self.errors.add("E230", f"share target {ref.target!r} is an input, not a block", ref.mark, f"{node.path}.share")
            if target is None:
                node.broken = True
            else:
                direct[node.path] = target
        links = {path: target.path for path, target in direct.items()}
        reported: set[frozenset[str]] = set()
        for path in direct:
            node = self.nodes[path]
            end, loop = follow_chain(path, links)
            target = self.nodes[end]
            if loop is None and target.broken and not target.block:
                node.broken = True  # it shares a share that failed, whose error is reported already
                continue
            if loop is None:
                node.share_of = target.path
                node.block, node.args, node.module_path = target.block, target.args, target.module_path
                continue
            node.broken = True
            if frozenset(loop) not in reported:
                reported.add(frozenset(loop))
                self.share_cycle(loop)

    def share_cycle(self, loop: list[str]) -> None:
        first = self.nodes[loop[0]]
        shown = " -> ".join([*loop, loop[0]])
        self.errors.add(
            "E230",
            f"shares form a cycle: {shown}",
            first.decl.mark_of("share"),
            f"{first.path}.share",
            "one node of the cycle must be a block call: give it 'block:'",
        )

    def tie(self, node: GraphNode, scope: _Scope, attr: str, ref: Ref) -> None:
        parts = ref.target.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            value, _ = self.resolve(scope, Ref(".".join(parts[:cut]), ref.mark), "", quiet=True)
            if value is not None and value in self.nodes:
                node.ties.append((attr, value, ".".join(parts[cut:]), ref.mark))
                return
        self.errors.add(
            "E230",
            f"tie target {ref.target!r} does not name node.parameter",
            ref.mark,
            f"{node.path}.tie.{attr}",
            "e.g. tie: {weight: embed.weight}",
        )


def expand(blueprint: Blueprint, errors: Collector) -> Expanded:
    """Unroll and connect the blueprint's graph; reports reference errors and cycles."""
    expander = _Expander(blueprint, errors)
    for name in blueprint.inputs:
        if name in blueprint.nodes:
            errors.add("E200", f"{name!r} names both an input and a node", blueprint.nodes[name].mark, f"nodes.{name}")
        expander.graph.add_node(name)
    top = _Scope(expander, blueprint.body, "", "", {name: name for name in blueprint.inputs})
    top.expand_all()
    expander.connect()
    outputs: dict[str, str] = {}
    for name, ref in blueprint.outputs.items():
        value, _ = expander.resolve(top, ref, f"outputs.{name}")
        if value is not None:
            outputs[name] = value
    taps = _expand_taps(blueprint, expander, top, errors)
    _check_cycles(expander, errors)
    return Expanded(expander.graph, expander.nodes, outputs, taps, list(blueprint.inputs))


def _natural_key(path: str) -> list[Any]:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split(".")]


def _expand_taps(blueprint: Blueprint, expander: _Expander, top: _Scope, errors: Collector) -> dict[str, TapInstance]:
    taps: dict[str, TapInstance] = {}
    candidates = sorted(expander.nodes, key=_natural_key)
    for tap in blueprint.taps.values():
        segments = tap.at.split(".")
        regex = re.compile("^" + r"\.".join("([^.]+)" if s == "*" else re.escape(s) for s in segments) + "$")
        matches = [p for p in candidates if regex.match(p)] if "*" in segments else []
        if "*" not in segments:
            value, _ = expander.resolve(top, Ref(tap.at, tap.mark), f"taps.{tap.name}", quiet=True)
            matches = [value] if value is not None else []
        if not matches:
            near = fnmatch.filter(candidates, tap.at.split(".")[0] + "*")[:5]
            errors.add(
                "E212",
                f"tap pattern {tap.at!r} matches no node",
                tap.mark,
                f"taps.{tap.name}",
                f"nodes there include: {', '.join(near)}" if near else "",
            )
            continue
        for value in matches:
            match = regex.match(value) if "*" in segments else None
            suffix = ".".join(match.groups()) if match else ""
            name = f"{tap.name}.{suffix}" if suffix else tap.name
            taps[name] = TapInstance(name, value, tap.project_block, dict(tap.project_args), tap.mark)
    return taps


def _check_cycles(expander: _Expander, errors: Collector) -> None:
    try:
        cycle = nx.find_cycle(expander.graph)
    except nx.NetworkXNoCycle:
        return
    loop = [edge[0] for edge in cycle] + [cycle[0][0]]
    first = expander.nodes.get(cycle[0][1]) or expander.nodes.get(cycle[0][0])
    errors.add(
        "E211",
        f"the graph has a cycle: {' -> '.join(loop)}",
        first.mark if first else None,
        first.path if first else "",
        "a value cannot depend on itself; for recurrence use a mix block (e.g. mix.lstm) or a repeat stack with carry",
    )
