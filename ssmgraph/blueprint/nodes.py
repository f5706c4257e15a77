"""Nodes: block calls with their ``in``, ``args`` and ``tie``, ``share`` call sites, and groups
and stacks (a node with a ``body`` or ``use``, whose sub-graph stacks.py resolves)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ssmgraph.blueprint.document import NodeDecl, Ref
from ssmgraph.blueprint.stacks import BodyResolver
from ssmgraph.blueprint.values import BAD, Where, kind_of
from ssmgraph.blueprint.yamlsafe import LDict, mark_of

NODE_KEYS = ("block", "in", "args", "share", "tie", "repeat", "carry", "body", "use", "at", "share_weights", "doc")
KINDS = ("block", "share", "body", "use")
"""A node has exactly one of these keys."""


class NodeResolver(BodyResolver):
    """Resolves ``nodes:`` tables, in bodies and fragments as at the top level."""

    def nodes(self, raw: Any, where: Where) -> dict[str, NodeDecl]:
        table = self.expect_map(raw, where.mark, where.path, "nodes")
        out: dict[str, NodeDecl] = {}
        if table is None:
            return out
        if not table:
            self.report("E111", "no nodes: a graph needs at least one node", where.mark, where.path)
        for name, node_raw in table.items():
            node_where = where.key(name, table.key_mark(name))
            if not self.check_name(name, node_where.mark, node_where.path):
                continue
            node = self.node(name, node_raw, node_where)
            if node is not None:
                out[name] = node
        return out

    def node(self, name: str, raw: Any, where: Where) -> NodeDecl | None:
        table = self.expect_map(raw, where.mark, where.path, "a node")
        if table is None:
            return None
        path = where.path
        self.check_keys(table, NODE_KEYS, path, "a node")
        node = NodeDecl(name=name, mark=self.located(where.mark))
        node.marks = {k: self.located(table.mark_of(k)) for k in table}
        kinds = [k for k in KINDS if k in table]
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else "none"
            self.report(
                "E111",
                f"a node needs exactly one of block, share, body, use (found {found})",
                where.mark,
                path,
                "e.g. mix: {block: mix.attention, in: x}",
            )
            return None
        kind = kinds[0]
        if "in" in table:
            node.inputs = self.refs(table["in"], where.key("in", table.mark_of("in")))
        elif kind != "body" and kind != "use":
            self.report("E111", "missing 'in': which value does this node read?", where.mark, path)
        if kind == "block":
            self.block_call(node, table, where)
        elif "args" in table and kind == "share":
            self.report(
                "E110", "a 'share' node reuses another node's module and takes no args", table.key_mark("args"), f"{path}.args"
            )
        elif "args" in table and kind == "body":
            self.report(
                "E110",
                "a node with 'body' takes no args (they would be ignored)",
                table.key_mark("args"),
                f"{path}.args",
                "give a fragment its args inside the body, body: {use: ..., args: {...}}, or write use: and args: on the node",
            )
        if "share" in table:
            share = self.typed(table, "share", (str,), where, "share")
            if share is not BAD:
                node.share = Ref(share, self.located(table.mark_of("share")))
        if "tie" in table:
            node.tie = self.ties(table["tie"], where.key("tie", table.mark_of("tie")))
        if "doc" in table:
            node.doc = str(table["doc"])
        if kind in ("body", "use"):
            self.group(node, table, kind, where)
        else:
            for key in ("repeat", "carry", "at", "share_weights"):
                if key in table:
                    self.report(
                        "E110", f"{key!r} belongs to a node with a body (a repeat stack)", table.key_mark(key), f"{path}.{key}"
                    )
        return node

    def block_call(self, node: NodeDecl, raw: LDict, where: Where) -> None:
        """Fill ``node``'s ``block`` and ``args``, keeping each argument's mark."""
        block = self.typed(raw, "block", (str,), where, "block")
        if block is not BAD and not block.strip():
            self.report(
                "E112",
                "block name is empty",
                raw.mark_of("block"),
                f"{where.path}.block",
                "e.g. block: mix.attention (`ssmgraph blocks` lists them)",
            )
            block = BAD
        node.block = block if block is not BAD else None
        args_where = where.key("args", raw.mark_of("args"))
        args = self.value(raw.get("args"), args_where)
        args = self.expect_map(args, args_where.mark, args_where.path, "args") if args is not BAD else None
        node.args = args if args is not None else LDict()
        if args is not None:
            self.string_keys(args, args_where.path, "argument")
        if args is not None and any(v is BAD for v in args.values()):
            node.args = LDict({k: v for k, v in args.items() if v is not BAD})
        if isinstance(args, LDict):
            for k in args:
                node.marks[f"args.{k}"] = self.located(args.key_mark(k))

    def group(self, node: NodeDecl, raw: LDict, kind: str, where: Where) -> None:
        """Fill ``node``'s body (inline, or a fragment's through ``use``) and, for a stack, its repeat."""
        if kind == "use":
            body_raw = LDict({"use": raw["use"]}, mark=raw.mark_of("use"))
            body_raw.value_marks["use"] = raw.mark_of("use")
            if "args" in raw:
                body_raw["args"] = raw["args"]
                body_raw.value_marks["args"] = raw.mark_of("args")
            body_where = replace(where, mark=raw.mark_of("use"))
        else:
            body_raw = raw["body"]
            body_where = where.key("body", raw.mark_of("body"))
        node.body = self.body(body_raw, body_where)
        self.stack(node, raw, body_raw, where)

    def refs(self, raw: Any, where: Where) -> list[Ref]:
        """``in:``: a name, a list of names, or a mapping port: name."""
        value = self.value(raw, where)
        if value is BAD:
            return []
        if isinstance(value, str):
            return [Ref(value, self.located(where.mark))]
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return [Ref(v, self.located(mark_of(value, i, where.mark))) for i, v in enumerate(value)]
        if isinstance(value, dict) and value and all(isinstance(v, str) for v in value.values()):
            return [
                Ref(v, self.located(value.mark_of(k) if isinstance(value, LDict) else where.mark), port=str(k))
                for k, v in value.items()
            ]
        self.report(
            "E112", f"'in' must be a name, a list of names or a mapping port: name, got {kind_of(value)}", where.mark, where.path
        )
        return []

    def ties(self, raw: Any, where: Where) -> dict[str, Ref]:
        """``tie:``: which of this block's parameters are which other node's (``weight: embed.weight``)."""
        table = self.expect_map(raw, where.mark, where.path, "tie")
        out: dict[str, Ref] = {}
        for attr, target in (table or {}).items():
            if not isinstance(target, str) or "." not in target:
                self.report(
                    "E230",
                    f"tie target {target!r} must read node.parameter, e.g. embed.weight",
                    table.mark_of(attr),
                    f"{where.path}.{attr}",
                )
                continue
            out[str(attr)] = Ref(target, self.located(table.mark_of(attr)))
        return out
