"""Sub-graphs: inline bodies, fragments (``use:``), ``repeat`` stacks and their ``at:`` overrides.

A fragment is resolved in its own scope (its ``params``, set by the caller's ``args``); the
marks of what it holds get the ``use:`` marks it is reached through, so an error inside one
names the fragment's line and, below it, where it was used. An ``at:`` override is resolved
into a whole body per index it names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ssmgraph.blueprint.document import FORMAT_VERSION, Body, NodeDecl, Ref
from ssmgraph.blueprint.files import display_path
from ssmgraph.blueprint.names import DOTTED
from ssmgraph.blueprint.values import BAD, Evaluated, MergedArgs, ValueResolver, Where, kind_of, merge_marked
from ssmgraph.blueprint.yamlsafe import LDict, load_file, mark_of
from ssmgraph.errors import BlueprintError, Collector, Mark, did_you_mean

FRAGMENT_KEYS = ("ssmgraph", "kind", "name", "doc", "params", "inputs", "nodes", "outputs")
BODY_KEYS = ("inputs", "nodes", "outputs", "use", "args")
AT_KEYS = ("args", "nodes", "body")
MAX_REPEAT = 10_000
MAX_FRAGMENT_DEPTH = 16


@dataclass(frozen=True)
class Override:
    """An ``at:`` entry that changes a stack's body: new fragment ``args`` and node changes
    (``nodes``), both already evaluated where the override is written."""

    args: Mapping[str, Any] | None
    nodes: Any
    nodes_mark: Mark | None


class BodyResolver(ValueResolver, ABC):
    """Resolves sub-graphs; the nodes inside them are the subclass's job (:meth:`nodes`)."""

    def __init__(self, errors: Collector, fragment_dirs: tuple[Path, ...] = ()):
        super().__init__(errors)
        self.fragment_dirs = fragment_dirs
        self.fragment_cache: dict[Path, Any] = {}
        self.fragment_stack: list[Path] = []

    @abstractmethod
    def nodes(self, raw: Any, where: Where) -> dict[str, NodeDecl]:
        """A ``nodes:`` table, resolved (see nodes.py)."""

    def version(self, doc: LDict, source: str, kind: str) -> None:
        """Check ``ssmgraph: 1`` and ``kind`` of a blueprint or fragment file."""
        if "ssmgraph" not in doc:
            self.report(
                "E111",
                f"missing format version: a {kind} starts with 'ssmgraph: {FORMAT_VERSION}'",
                doc.mark or Mark(source, 1, 1),
                "ssmgraph",
            )
        elif doc["ssmgraph"] != FORMAT_VERSION:
            self.report(
                "E113",
                f"format version {doc['ssmgraph']!r} is not supported (this ssmgraph reads version {FORMAT_VERSION})",
                doc.mark_of("ssmgraph"),
                "ssmgraph",
                f"write 'ssmgraph: {FORMAT_VERSION}' (a number, not a string)"
                if str(doc["ssmgraph"]) == str(FORMAT_VERSION)
                else "",
            )
        declared = doc.get("kind", "blueprint")
        if declared != kind:
            self.report("E112", f"expected kind {kind!r}, this file is kind {declared!r}", doc.mark_of("kind"), "kind")

    # ---- bodies ---------------------------------------------------------------------------
    def body(self, raw: Any, where: Where, override: Override | None = None) -> Body | None:
        """An inline body (``inputs``, ``nodes``, ``outputs``) or a fragment's (``use``, ``args``)."""
        table = self.expect_map(raw, where.mark, where.path, "a body")
        if table is None:
            return None
        self.check_keys(table, BODY_KEYS, where.path, "a body")
        if "use" in table:
            return self.fragment(table, where, override)
        if override is not None and override.args:
            self.report(
                "E130",
                "'args' overrides need a body that uses a fragment (use:)",
                where.mark,
                where.path,
                "override nodes instead: at: {3: {nodes: {mix: {block: ...}}}}",
            )
            return None
        return self.inline_body(table, where, override)

    def inline_body(self, raw: LDict, where: Where, override: Override | None = None) -> Body | None:
        inputs_raw = raw.get("inputs")
        if not isinstance(inputs_raw, list) or not inputs_raw or not all(isinstance(i, str) for i in inputs_raw):
            self.report("E112", "a body needs 'inputs': a list of names, e.g. [x]", raw.mark_of("inputs"), f"{where.path}.inputs")
            return None
        inputs = list(inputs_raw)
        for i, name in enumerate(inputs):
            self.check_name(name, mark_of(inputs_raw, i, raw.mark), f"{where.path}.inputs")
        nodes_raw = raw.get("nodes")
        if override is not None and override.nodes:
            nodes_raw = self.merge_node_overrides(nodes_raw, override, where.path)
            if nodes_raw is None:
                return None
        nodes = self.nodes(nodes_raw, where.key("nodes", raw.mark_of("nodes")))
        for name in inputs:
            if name in nodes:
                self.report(
                    "E200",
                    f"{name!r} names both a body input and a node",
                    nodes[name].mark,
                    f"{where.path}.nodes.{name}",
                    "rename the node",
                )
        outputs = self.outputs(raw.get("outputs"), raw.mark_of("outputs"), f"{where.path}.outputs", required=True)
        return Body(inputs=inputs, nodes=nodes, outputs=outputs, mark=self.located(raw.mark))

    def outputs(self, raw: Any, mark: Mark | None, path: str, required: bool) -> dict[str, Ref]:
        """The ``outputs:`` of a body or of the blueprint: ``{name: node}``."""
        if raw is None and required:
            self.report("E111", "missing 'outputs': name what the graph returns, e.g. outputs: {logits: head}", mark, path)
            return {}
        table = self.expect_map(raw, mark, path, "outputs")
        out: dict[str, Ref] = {}
        for name, target in (table or {}).items():
            if not isinstance(name, str) or not DOTTED.match(name):
                self.report("E200", f"output name {name!r} must be a name (dots allowed)", table.key_mark(name), path)
            elif not isinstance(target, str):
                self.report(
                    "E112", f"output {name!r} must name a node, got {kind_of(target)}", table.mark_of(name), f"{path}.{name}"
                )
            else:
                out[name] = Ref(target, self.located(table.mark_of(name)))
        return out

    def merge_node_overrides(self, nodes_raw: Any, override: Override, path: str) -> LDict | None:
        """The body's ``nodes`` as written, with an override's ``block``/``args`` changes merged in."""
        changes = override.nodes
        if not isinstance(nodes_raw, LDict) or not isinstance(changes, dict):
            self.report(
                "E112",
                "'nodes' overrides must be a mapping node: {block: ..., args: {...}}",
                getattr(changes, "mark", None) or override.nodes_mark,
                path,
            )
            return None
        merged = LDict(nodes_raw, mark=nodes_raw.mark)
        merged.key_marks, merged.value_marks = dict(nodes_raw.key_marks), dict(nodes_raw.value_marks)
        for name, change in changes.items():
            where = changes.mark_of(name) if isinstance(changes, LDict) else None
            if name not in nodes_raw:
                self.report(
                    "E210",
                    f"override names node {name!r}, which the body does not have",
                    where,
                    f"{path}.nodes.{name}",
                    did_you_mean(str(name), nodes_raw),
                )
                continue
            if not isinstance(change, dict) or set(change) - {"block", "args"} or not isinstance(change.get("args") or {}, dict):
                self.report("E112", "a node override may set 'block' and 'args' (a mapping) only", where, f"{path}.nodes.{name}")
                continue
            base = nodes_raw[name]
            if isinstance(base, dict):  # else the node itself is malformed; resolving it reports why
                merged[name] = overridden_node(base, change)
        return merged

    # ---- fragments ------------------------------------------------------------------------
    def fragment(self, raw: LDict, where: Where, override: Override | None) -> Body | None:
        """The body of the fragment file ``raw['use']``, resolved with ``raw['args']`` (and an
        override's args and node changes) in the fragment's own scope."""
        use_mark = raw.mark_of("use")
        target = raw["use"]
        if not isinstance(target, str) or not target.endswith((".yaml", ".yml")):
            self.report("E130", f"'use' takes the path of a fragment file (.yaml), got {target!r}", use_mark, f"{where.path}.use")
            return None
        found = self.find_fragment(target, where.base_dir)
        if found is None:
            searched = ", ".join(str(d) for d in (where.base_dir, *self.fragment_dirs))
            self.report(
                "E130",
                f"fragment {target!r} not found",
                use_mark,
                f"{where.path}.use",
                f"paths are relative to the blueprint's folder; searched: {searched}",
            )
            return None
        if found in self.fragment_stack or len(self.fragment_stack) >= MAX_FRAGMENT_DEPTH:
            chain = " -> ".join(p.name for p in (*self.fragment_stack, found))
            self.report("E130", f"fragments use each other in a loop: {chain}", use_mark, f"{where.path}.use")
            return None
        args = self.fragment_args(raw, where, override)
        if args is None:
            return None
        doc = self.fragment_document(found, use_mark, f"{where.path}.use")
        if doc is None:
            return None
        outer_via = self.via
        self.via = (*self.via, self.located(use_mark))
        self.fragment_stack.append(found)
        try:
            self.check_keys(doc, FRAGMENT_KEYS, "", "a fragment")
            self.version(doc, str(found), "fragment")
            fragment_where = Where(f"{where.path}.use", use_mark, {}, found.parent)
            scope = self.params(
                doc.get("params"), replace(fragment_where, path="params", mark=doc.key_mark("params")), args, f"args of {target}"
            )
            body_raw = LDict({k: doc[k] for k in ("inputs", "nodes", "outputs") if k in doc}, mark=doc.mark)
            body_raw.key_marks, body_raw.value_marks = dict(doc.key_marks), dict(doc.value_marks)
            return self.inline_body(body_raw, replace(fragment_where, scope=scope), override)
        finally:
            self.fragment_stack.pop()
            self.via = outer_via

    def fragment_args(self, raw: LDict, where: Where, override: Override | None) -> dict[str, Evaluated] | None:
        """The args a fragment is used with, evaluated here, in the caller's scope: the fragment
        must not evaluate them again. None after an error."""
        args = self.value(raw.get("args"), where.key("args", raw.mark_of("args")))
        if args is BAD:
            return None
        if args is not None and not isinstance(args, dict):
            self.report(
                "E112", f"fragment args must be a mapping, got {kind_of(args)}", raw.mark_of("args"), f"{where.path}.args"
            )
            return None
        given = (args or {}, (override.args if override is not None else None) or {})
        for table in given:
            self.string_keys(table, f"{where.path}.args", "argument")
        return {k: Evaluated(v) for table in given for k, v in table.items() if isinstance(k, str)}

    def fragment_document(self, found: Path, use_mark: Mark | None, path: str) -> LDict | None:
        """The fragment file, read once; its read errors are located where it is used."""
        doc = self.fragment_cache.get(found)
        if doc is None:
            try:
                doc = load_file(found, display_path(found, self.fragment_dirs))
            except BlueprintError as exc:
                for d in exc.diagnostics:
                    mark = replace(d.mark, via=(*self.via, self.located(use_mark))) if d.mark else self.located(use_mark)
                    self.errors.add(d.code, d.message, mark, d.path, d.help)
                return None
            self.fragment_cache[found] = doc
        return self.expect_map(doc, use_mark, path, "a fragment")

    def find_fragment(self, target: str, base_dir: Path) -> Path | None:
        for folder in (base_dir, *self.fragment_dirs):
            candidate = (folder / target).resolve()
            if candidate.is_file():
                return candidate
        return None

    # ---- repeat stacks and at: overrides --------------------------------------------------
    def stack(self, node: NodeDecl, raw: LDict, body_raw: Any, where: Where) -> None:
        """Fill ``node``'s ``repeat``, ``share_weights``, ``carry`` and ``at`` from ``raw``."""
        path = where.path
        if "repeat" not in raw:
            for key in ("carry", "at", "share_weights"):
                if key in raw:
                    self.report("E110", f"{key!r} needs 'repeat'", raw.key_mark(key), f"{path}.{key}")
            return
        count = self.typed(raw, "repeat", (int,), where, "repeat")
        if count is BAD:
            return
        if not 1 <= count <= MAX_REPEAT:
            self.report(
                "E213", f"repeat must be between 1 and {MAX_REPEAT}, got {count}", raw.mark_of("repeat"), f"{path}.repeat"
            )
            return
        node.repeat = count
        if "share_weights" in raw:
            flag = self.typed(raw, "share_weights", (bool,), where, "share_weights")
            node.share_weights = flag is True
        if "carry" in raw:
            carry = self.typed(raw, "carry", (str,), where, "carry")
            node.carry = carry if carry is not BAD else None
        elif node.body is not None and len(node.body.outputs) == 1 and len(node.body.inputs) >= 1:
            out_name = next(iter(node.body.outputs))
            node.carry = out_name if out_name in node.body.inputs else None
        if node.body is not None:
            if node.carry is None:
                self.report(
                    "E213",
                    "a repeat stack needs 'carry': the body output fed to the next layer's input of the same name",
                    raw.mark or node.mark,
                    path,
                )
            elif node.carry not in node.body.outputs or node.carry not in node.body.inputs:
                self.report(
                    "E213",
                    f"carry {node.carry!r} must name both a body input and a body output",
                    raw.mark_of("carry") if "carry" in raw else node.mark,
                    f"{path}.carry",
                    f"body inputs: {', '.join(node.body.inputs) or 'none'}; outputs: {', '.join(node.body.outputs) or 'none'}",
                )
        if "at" in raw:
            node.at = self.overrides(raw["at"], count, body_raw, where.key("at", raw.mark_of("at")))

    def overrides(self, raw: Any, count: int, body_raw: Any, where: Where) -> dict[int, Body]:
        """``at:``: the body of each overridden layer, by index."""
        table = self.expect_map(raw, where.mark, where.path, "at")
        out: dict[int, Body] = {}
        if table is None:
            return out
        for key, entry_raw in table.items():
            entry = where.key(key, table.mark_of(key))
            indices = self.indices(key, count, table.key_mark(key), entry.path)
            entry_table = self.expect_map(entry_raw, entry.mark, entry.path, "an override")
            if indices is None or entry_table is None:
                continue
            self.check_keys(entry_table, AT_KEYS, entry.path, "an override")
            if "body" in entry_table:
                body = self.body(entry_table["body"], entry.key("body", entry_table.mark_of("body")))
            else:
                args = self.value(entry_table.get("args"), entry.key("args", entry_table.mark_of("args")))
                nodes = self.value(entry_table.get("nodes"), entry.key("nodes", entry_table.mark_of("nodes")))
                if args is BAD or nodes is BAD:
                    continue
                if args is not None and not isinstance(args, dict):
                    self.report(
                        "E112",
                        f"override args must be a mapping, got {kind_of(args)}",
                        entry_table.mark_of("args"),
                        f"{entry.path}.args",
                    )
                    continue
                override = Override(args, nodes, entry_table.mark_of("nodes"))
                body = self.body(body_raw, replace(entry, mark=entry_table.mark), override)
            if body is not None:
                for i in indices:
                    out[i] = body
        return out

    def indices(self, key: Any, count: int, mark: Mark | None, path: str) -> list[int] | None:
        """The layers an ``at:`` key names: ``3``, ``-1``, ``"3,7"``, ``"0-2"``; None after an error."""
        parts = [key] if isinstance(key, int) and not isinstance(key, bool) else str(key).replace(" ", "").split(",")
        out: list[int] = []
        for part in parts:
            try:
                if isinstance(part, str) and "-" in part.lstrip("-"):
                    lo, hi = part.lstrip("-").split("-", 1) if not part.startswith("-") else (None, None)
                    if lo is None:
                        raise ValueError
                    first, last = int(lo), int(hi)
                    if last >= count or first > last:
                        raise IndexError(f"range {part} does not fit a stack of {count} layers")
                    out.extend(range(first, last + 1))
                else:
                    out.append(int(part))
            except ValueError:
                self.report("E213", f"override key {key!r} is not an index, a list '3,7' or a range '0-2'", mark, path)
                return None
            except IndexError as exc:
                self.report("E213", str(exc), mark, path, f"valid indices are 0..{count - 1} (or -1 for the last)")
                return None
        normalised = []
        for i in out:
            j = i + count if i < 0 else i
            if not 0 <= j < count:
                self.report(
                    "E213",
                    f"index {i} is out of range for a stack of {count} layers",
                    mark,
                    path,
                    f"valid indices are 0..{count - 1} (or -1 for the last)",
                )
                return None
            normalised.append(j)
        return normalised


def overridden_node(base: dict, change: dict) -> LDict:
    """``base`` (a node as written) with an override's already evaluated block and args."""
    node = merge_marked(base)
    for key in ("block", "args"):
        if key not in change:
            continue
        node[key] = Evaluated(change[key]) if key == "block" else MergedArgs(base.get("args"), change[key] or {})
        if isinstance(change, LDict):
            node.value_marks[key] = change.mark_of(key)
    return node
