"""Marked YAML values → a typed :class:`Blueprint`.

Checks the structure (keys, types), evaluates ``params`` and ``$`` expressions, inlines
fragments (``use:``) and applies per-index overrides (``at:``). Every problem found is
collected with its mark; the phase ends with one :class:`BlueprintError` listing them all.
Block names and block parameters are *not* checked here: that needs the registry and is
the graph compiler's first phase.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssmgraph.blueprint.expr import ExprError, evaluate, is_expression, unescape
from ssmgraph.blueprint.model import (
    FORMAT_VERSION,
    Blueprint,
    Body,
    InputDecl,
    ModelView,
    NodeDecl,
    Ref,
    TapDecl,
)
from ssmgraph.blueprint.yamlsafe import LDict, LList, load_file
from ssmgraph.errors import BlueprintError, Collector, Mark, did_you_mean

TOP_KEYS = ("ssmgraph", "kind", "name", "doc", "params", "inputs", "nodes", "outputs", "taps", "models", "align")
FRAGMENT_KEYS = ("ssmgraph", "kind", "name", "doc", "params", "inputs", "nodes", "outputs")
NODE_KEYS = ("block", "in", "args", "share", "tie", "repeat", "carry", "body", "use", "at", "share_weights", "doc")
BODY_KEYS = ("inputs", "nodes", "outputs", "use", "args")
AT_KEYS = ("args", "nodes", "body")
INPUT_KEYS = ("dtype", "shape", "doc")
TAP_KEYS = ("at", "project", "doc")
MODEL_KEYS = ("outputs", "taps", "doc")
DTYPES = {"int64": "int", "int": "int", "long": "int", "float32": "float", "float": "float"}
MAX_REPEAT = 10_000
MAX_FRAGMENT_DEPTH = 16

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
MODULE_ATTRS = frozenset(n for n in dir(__import__("torch").nn.Module) if not n.startswith("__"))
"""What a submodule name must not shadow on any ``nn.Module`` (a tap's projection lives in ``taps``)."""


def submodule_name_ok(name: str) -> bool:
    """Whether ``name`` can name a submodule: an identifier, not a keyword, no ``_`` in front,
    not an ``nn.Module`` member (taps and the names merges give models' layers)."""
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_") and name not in MODULE_ATTRS
# Node names also must not shadow the compiled model's own members, nor the ``self`` of the
# generated forward. Names starting with ``_`` are refused too (private members).
RESERVED = frozenset(
    {
        "taps", "forward", "forward_with_state", "step", "init_state", "generate", "training", "state_dict", "blueprint", "view",
        "input_types", "outputs", "tap_sources", "tap_names", "nodes", "order", "tied", "generated_source",
        "supports_step", "self",
    }
) | MODULE_ATTRS

_BAD = object()  # the value of something that already produced an error


@dataclass(frozen=True)
class _Evaluated:
    """A value already evaluated in the scope that wrote it (fragment args, ``at:`` overrides).

    A fragment evaluates it again in its own scope; unwrapped as is, ``$$price`` stays the
    string ``$price`` there instead of becoming an expression over the fragment's params."""

    value: Any


@dataclass(frozen=True)
class _MergedArgs:
    """A node's ``args`` with an ``at:`` override's (evaluated) args on top.

    ``base`` may be an expression (``args: $mixer_args``), so the merge waits for its value."""

    base: Any
    extra: Mapping[str, Any]


class _Scope(dict):
    """Parameter values visible to expressions."""


class Resolver:
    def __init__(self, errors: Collector, fragment_dirs: tuple[Path, ...] = ()):
        self.errors = errors
        self.fragment_dirs = fragment_dirs
        self.fragment_cache: dict[Path, Any] = {}
        self.via: tuple[Mark, ...] = ()
        self.fragment_stack: list[Path] = []
        self.override_mark: Mark | None = None

    # ---- marks and small checks ---------------------------------------------------------
    def m(self, mark: Mark | None) -> Mark | None:
        if mark is None or not self.via:
            return mark
        return Mark(mark.file, mark.line, mark.col, self.via)

    def err(self, code: str, message: str, mark: Mark | None, path: str, help: str = "") -> None:
        self.errors.add(code, message, self.m(mark), path, help)

    def check_keys(self, raw: LDict, allowed: tuple[str, ...], path: str, what: str) -> None:
        for key in raw:
            if key not in allowed:
                self.err(
                    "E110",
                    f"unknown key {key!r} in {what}",
                    raw.key_mark(key),
                    f"{path}.{key}" if path else str(key),
                    did_you_mean(str(key), allowed),
                )

    def expect_map(self, value: Any, mark: Mark | None, path: str, what: str) -> LDict | None:
        if value is None:
            return LDict(mark=mark)
        if isinstance(value, LDict):
            return value
        if isinstance(value, dict):
            out = LDict(value, mark=mark)
            return out
        self.err("E112", f"{what} must be a mapping, got {_kind(value)}", mark, path)
        return None

    def value(self, value: Any, scope: Mapping[str, Any], mark: Mark | None, path: str) -> Any:
        """Evaluate expressions anywhere inside ``value`` (keeping marks)."""
        if isinstance(value, _Evaluated):
            return value.value
        if isinstance(value, _MergedArgs):
            return self.merged_args(value, scope, mark, path)
        if is_expression(value):
            try:
                return evaluate(value, scope)
            except ExprError as exc:
                code = "E121" if exc.unknown else "E120"
                help = did_you_mean(exc.unknown, scope) if exc.unknown else "expressions use +, -, *, /, //, %, **, min(), max() over params"
                self.err(code, f"in expression {value!r}: {exc}", mark, path, help)
                return _BAD
        if isinstance(value, LDict):
            out = LDict(mark=value.mark)
            out.key_marks = dict(value.key_marks)
            out.value_marks = dict(value.value_marks)
            for k, v in value.items():
                out[k] = self.value(v, scope, value.mark_of(k), f"{path}.{k}")
            return out
        if isinstance(value, LList):
            out_list = LList(mark=value.mark)
            for i, v in enumerate(value):
                out_list.append(self.value(v, scope, value.mark_of(i), f"{path}[{i}]"))
            out_list.item_marks = list(value.item_marks)
            return out_list
        if isinstance(value, dict):
            return {k: self.value(v, scope, mark, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, scope, mark, f"{path}[{i}]") for i, v in enumerate(value)]
        return unescape(value)

    def merged_args(self, value: _MergedArgs, scope: Mapping[str, Any], mark: Mark | None, path: str) -> Any:
        base = self.value(value.base, scope, mark, path)
        if base is None:
            base = LDict(mark=mark)
        if not isinstance(base, dict):
            return base  # not a mapping: the node reports it
        return _merge_marked(base, value.extra)

    def string_keys(self, table: Mapping[Any, Any], path: str, what: str) -> bool:
        """Report keys that are not strings (``{1: 2}``); True when there are none."""
        bad = [key for key in table if not isinstance(key, str)]
        for key in bad:
            mark = table.key_mark(key) if isinstance(table, LDict) else None
            self.err("E112", f"{what} name must be a string, got {_kind(key)}", mark, f"{path}.{key}", "names are identifiers such as dim or heads")
        return not bad

    def typed(self, raw: LDict, key: str, types: tuple[type, ...], scope: Mapping[str, Any], path: str, what: str) -> Any:
        value = self.value(raw[key], scope, raw.mark_of(key), f"{path}.{key}")
        if value is _BAD:
            return _BAD
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            self.err("E112", f"{what} must be {names}, got {_kind(value)}", raw.mark_of(key), f"{path}.{key}")
            return _BAD
        return value

    # ---- params -------------------------------------------------------------------------
    def params(self, raw: Any, mark: Mark | None, overrides: Mapping[str, Any], path: str, origin: str) -> _Scope:
        params = self.expect_map(raw, mark, path, "params") or LDict()
        for name in overrides:
            if name not in params:
                self.err("E121", f"no parameter {name!r} to override ({origin})", mark, path, did_you_mean(name, params) or "this file defines no params")
        scope = _Scope()
        for name, value in params.items():
            if not isinstance(name, str) or not IDENT.match(name):
                self.err("E200", f"parameter name {name!r} is not an identifier", params.key_mark(name), path)
                continue
            if name in overrides and origin == "--set" and not _same_kind(value, overrides[name]):
                wanted = "true or false" if isinstance(value, bool) else "a number"
                self.err(
                    "E112", f"--set {name}={overrides[name]!r} does not fit the parameter, whose default is {value!r}",
                    params.mark_of(name), f"{path}.{name}", f"give {wanted}, e.g. --set {name}={str(value).lower() if isinstance(value, bool) else value}",
                )  # the default stands in, so that this one mistake is the one reported
            elif name in overrides:
                value = overrides[name]
            scope[name] = self.value(value, scope, params.mark_of(name), f"{path}.{name}")
        return scope

    # ---- blueprint ----------------------------------------------------------------------
    def blueprint(self, raw: Any, source: str, base_dir: Path, overrides: Mapping[str, Any]) -> Blueprint:
        if not isinstance(raw, dict):
            what = "empty" if raw is None else f"{_kind(raw)}, not a mapping"
            self.err("E111" if raw is None else "E112", f"the file is {what}; a blueprint is a mapping that starts with 'ssmgraph: 1'", getattr(raw, "mark", None) or Mark(source, 1, 1), "")
            self.errors.raise_if_any()
        doc = raw if isinstance(raw, LDict) else LDict(raw, mark=Mark(source, 1, 1))
        self.check_keys(doc, TOP_KEYS, "", "a blueprint")
        self.version(doc, source, "blueprint")
        scope = self.params(doc.get("params"), doc.key_mark("params"), overrides, "params", "--set")
        inputs = self.inputs(doc.get("inputs"), doc.mark_of("inputs"), scope)
        nodes = self.nodes(doc.get("nodes"), doc.mark_of("nodes"), scope, base_dir, "nodes")
        outputs = self.outputs(doc.get("outputs"), doc.mark_of("outputs"), "outputs", required=True)
        taps = self.taps(doc.get("taps"), doc.mark_of("taps"), scope)
        models = self.models(doc.get("models"), doc.mark_of("models"), outputs, taps)
        align = doc.get("align") or []
        name = doc.get("name", Path(source).stem)
        return Blueprint(
            name=str(name),
            source=source,
            params=dict(scope),
            inputs=inputs,
            body=Body(inputs=list(inputs), nodes=nodes, outputs=outputs, mark=doc.mark),
            taps=taps,
            models=models,
            align=list(align) if isinstance(align, list) else [align],
            doc=str(doc.get("doc", "") or ""),
        )

    def version(self, doc: LDict, source: str, kind: str) -> None:
        if "ssmgraph" not in doc:
            self.err("E111", f"missing format version: a {kind} starts with 'ssmgraph: {FORMAT_VERSION}'", doc.mark or Mark(source, 1, 1), "ssmgraph")
        elif doc["ssmgraph"] != FORMAT_VERSION:
            self.err(
                "E113",
                f"format version {doc['ssmgraph']!r} is not supported (this ssmgraph reads version {FORMAT_VERSION})",
                doc.mark_of("ssmgraph"),
                "ssmgraph",
                f"write 'ssmgraph: {FORMAT_VERSION}' (a number, not a string)" if str(doc["ssmgraph"]) == str(FORMAT_VERSION) else "",
            )
        declared = doc.get("kind", "blueprint")
        if declared != kind:
            self.err("E112", f"expected kind {kind!r}, this file is kind {declared!r}", doc.mark_of("kind"), "kind")

    def inputs(self, raw: Any, mark: Mark | None, scope: Mapping[str, Any]) -> dict[str, InputDecl]:
        table = self.expect_map(raw, mark, "inputs", "inputs")
        out: dict[str, InputDecl] = {}
        if table is None:
            return out
        if not table:
            self.err("E111", "a blueprint needs at least one input", mark, "inputs", "e.g. inputs: {tokens: {dtype: int64, shape: [batch, seq]}}")
        for name, spec in table.items():
            path = f"inputs.{name}"
            if not self.check_name(name, table.key_mark(name), path):
                continue
            spec = self.expect_map(spec, table.mark_of(name), path, "an input")
            if spec is None:
                continue
            self.check_keys(spec, INPUT_KEYS, path, "an input")
            dtype_raw = spec.get("dtype", "int64")
            dtype = DTYPES.get(dtype_raw) if isinstance(dtype_raw, str) else None
            if dtype is None:
                self.err("E112", f"dtype {dtype_raw!r} is not one of int64, float32", spec.mark_of("dtype"), f"{path}.dtype", did_you_mean(str(dtype_raw), DTYPES))
                continue
            shape_raw = self.value(spec.get("shape", ["batch", "seq"]), scope, spec.mark_of("shape"), f"{path}.shape")
            shape = self.shape(shape_raw, dtype, spec.mark_of("shape"), f"{path}.shape")
            if shape is not None:
                out[name] = InputDecl(name, dtype, shape, table.key_mark(name))
        return out

    def shape(self, value: Any, dtype: str, mark: Mark | None, path: str) -> tuple[int | str, ...] | None:
        if value is _BAD:
            return None
        if not isinstance(value, list) or not value:
            self.err("E112", f"shape must be a non-empty list like [batch, seq], got {_kind(value)}", mark, path)
            return None
        dims: list[int | str] = []
        for d in value:
            if isinstance(d, bool) or not isinstance(d, (int, str)) or (isinstance(d, int) and d < 1) or (isinstance(d, str) and not IDENT.match(d)):
                self.err("E112", f"dimension {d!r} must be a positive integer or a name such as 'batch'", mark, path)
                return None
            dims.append(d)
        if dtype == "float" and not isinstance(dims[-1], int):
            self.err("E112", "a float input needs its feature size as the last dimension, e.g. [batch, seq, 16]", mark, path)
            return None
        return tuple(dims)

    def check_name(self, name: Any, mark: Mark | None, path: str) -> bool:
        if not isinstance(name, str) or not IDENT.match(name) or keyword.iskeyword(name):
            self.err("E200", f"name {name!r} is not an identifier (letters, digits and _, not starting with a digit)", mark, path)
            return False
        if name in RESERVED:
            self.err("E200", f"name {name!r} is reserved (it would shadow a module attribute)", mark, path, f"rename it, e.g. {name}_")
            return False
        if name.startswith("_"):
            self.err("E200", f"name {name!r} starts with '_', which is reserved for module internals", mark, path, f"rename it, e.g. {name.lstrip('_') or 'x'}")
            return False
        return True

    # ---- nodes --------------------------------------------------------------------------
    def nodes(self, raw: Any, mark: Mark | None, scope: Mapping[str, Any], base_dir: Path, path: str) -> dict[str, NodeDecl]:
        table = self.expect_map(raw, mark, path, "nodes")
        out: dict[str, NodeDecl] = {}
        if table is None:
            return out
        if not table:
            self.err("E111", "no nodes: a graph needs at least one node", mark, path)
        for name, node_raw in table.items():
            node_path = f"{path}.{name}"
            if not self.check_name(name, table.key_mark(name), node_path):
                continue
            node = self.node(name, node_raw, table.key_mark(name), scope, base_dir, node_path)
            if node is not None:
                out[name] = node
        return out

    def node(self, name: str, raw: Any, mark: Mark | None, scope: Mapping[str, Any], base_dir: Path, path: str) -> NodeDecl | None:
        raw = self.expect_map(raw, mark, path, "a node")
        if raw is None:
            return None
        self.check_keys(raw, NODE_KEYS, path, "a node")
        node = NodeDecl(name=name, mark=self.m(mark))
        node.marks = {k: self.m(raw.mark_of(k)) for k in raw}
        kinds = [k for k in ("block", "share", "body", "use") if k in raw]
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else "none"
            self.err(
                "E111",
                f"a node needs exactly one of block, share, body, use (found {found})",
                mark,
                path,
                "e.g. mix: {block: mix.attention, in: x}",
            )
            return None
        if "in" in raw:
            node.inputs = self.refs(raw["in"], raw.mark_of("in"), scope, f"{path}.in")
        elif kinds[0] != "body" and kinds[0] != "use":
            self.err("E111", "missing 'in': which value does this node read?", mark, path)
        if "block" in raw:
            block = self.typed(raw, "block", (str,), scope, path, "block")
            if block is not _BAD and not block.strip():
                self.err("E112", "block name is empty", raw.mark_of("block"), f"{path}.block", "e.g. block: mix.attention (`ssmgraph blocks` lists them)")
                block = _BAD
            node.block = block if block is not _BAD else None
            args = self.value(raw.get("args"), scope, raw.mark_of("args"), f"{path}.args")
            args = self.expect_map(args, raw.mark_of("args"), f"{path}.args", "args") if args is not _BAD else None
            node.args = args if args is not None else LDict()
            if args is not None:
                self.string_keys(args, f"{path}.args", "argument")
            if args is not None and any(v is _BAD for v in args.values()):
                node.args = LDict({k: v for k, v in args.items() if v is not _BAD})
            if isinstance(args, LDict):
                for k in args:
                    node.marks[f"args.{k}"] = self.m(args.key_mark(k))
        elif "args" in raw and kinds[0] == "share":
            self.err("E110", "a 'share' node reuses another node's module and takes no args", raw.key_mark("args"), f"{path}.args")
        elif "args" in raw and kinds[0] == "body":
            self.err(
                "E110",
                "a node with 'body' takes no args (they would be ignored)",
                raw.key_mark("args"),
                f"{path}.args",
                "give a fragment its args inside the body, body: {use: ..., args: {...}}, or write use: and args: on the node",
            )
        if "share" in raw:
            share = self.typed(raw, "share", (str,), scope, path, "share")
            if share is not _BAD:
                node.share = Ref(share, self.m(raw.mark_of("share")))
        if "tie" in raw:
            node.tie = self.ties(raw["tie"], raw.mark_of("tie"), path)
        if "doc" in raw:
            node.doc = str(raw["doc"])
        if kinds[0] in ("body", "use"):
            if "use" in raw:
                body_raw = LDict({"use": raw["use"]}, mark=raw.mark_of("use"))
                body_raw.value_marks["use"] = raw.mark_of("use")
                if "args" in raw:
                    body_raw["args"] = raw["args"]
                    body_raw.value_marks["args"] = raw.mark_of("args")
            else:
                body_raw = raw["body"]
            node.body = self.body(body_raw, raw.mark_of(kinds[0]), scope, base_dir, path if kinds[0] == "use" else f"{path}.body")
            self.stack(node, raw, body_raw, scope, base_dir, path)
        else:
            for key in ("repeat", "carry", "at", "share_weights"):
                if key in raw:
                    self.err("E110", f"{key!r} belongs to a node with a body (a repeat stack)", raw.key_mark(key), f"{path}.{key}")
        return node

    def stack(self, node: NodeDecl, raw: LDict, body_raw: Any, scope: Mapping[str, Any], base_dir: Path, path: str) -> None:
        if "repeat" not in raw:
            for key in ("carry", "at", "share_weights"):
                if key in raw:
                    self.err("E110", f"{key!r} needs 'repeat'", raw.key_mark(key), f"{path}.{key}")
            return
        count = self.typed(raw, "repeat", (int,), scope, path, "repeat")
        if count is _BAD:
            return
        if not 1 <= count <= MAX_REPEAT:
            self.err("E213", f"repeat must be between 1 and {MAX_REPEAT}, got {count}", raw.mark_of("repeat"), f"{path}.repeat")
            return
        node.repeat = count
        if "share_weights" in raw:
            flag = self.typed(raw, "share_weights", (bool,), scope, path, "share_weights")
            node.share_weights = flag is True
        if "carry" in raw:
            carry = self.typed(raw, "carry", (str,), scope, path, "carry")
            node.carry = carry if carry is not _BAD else None
        elif node.body is not None and len(node.body.outputs) == 1 and len(node.body.inputs) >= 1:
            out_name = next(iter(node.body.outputs))
            node.carry = out_name if out_name in node.body.inputs else None
        if node.body is not None:
            if node.carry is None:
                self.err("E213", "a repeat stack needs 'carry': the body output fed to the next layer's input of the same name", raw.mark or node.mark, path)
            elif node.carry not in node.body.outputs or node.carry not in node.body.inputs:
                self.err(
                    "E213",
                    f"carry {node.carry!r} must name both a body input and a body output",
                    raw.mark_of("carry") if "carry" in raw else node.mark,
                    f"{path}.carry",
                    f"body inputs: {', '.join(node.body.inputs) or 'none'}; outputs: {', '.join(node.body.outputs) or 'none'}",
                )
        if "at" in raw:
            node.at = self.overrides(raw["at"], raw.mark_of("at"), count, body_raw, scope, base_dir, f"{path}.at")

    def overrides(self, raw: Any, mark: Mark | None, count: int, body_raw: Any, scope: Mapping[str, Any], base_dir: Path, path: str) -> dict[int, Body]:
        table = self.expect_map(raw, mark, path, "at")
        out: dict[int, Body] = {}
        if table is None:
            return out
        for key, override in table.items():
            indices = self.indices(key, count, table.key_mark(key), f"{path}.{key}")
            override = self.expect_map(override, table.mark_of(key), f"{path}.{key}", "an override")
            if indices is None or override is None:
                continue
            self.check_keys(override, AT_KEYS, f"{path}.{key}", "an override")
            if "body" in override:
                body = self.body(override["body"], override.mark_of("body"), scope, base_dir, f"{path}.{key}.body")
            else:
                args = self.value(override.get("args"), scope, override.mark_of("args"), f"{path}.{key}.args")
                nodes = self.value(override.get("nodes"), scope, override.mark_of("nodes"), f"{path}.{key}.nodes")
                if args is _BAD or nodes is _BAD:
                    continue
                if args is not None and not isinstance(args, dict):
                    self.err("E112", f"override args must be a mapping, got {_kind(args)}", override.mark_of("args"), f"{path}.{key}.args")
                    continue
                self.override_mark = override.mark_of("nodes")
                body = self.body(body_raw, override.mark, scope, base_dir, f"{path}.{key}", extra_args=args, node_overrides=nodes)
            if body is not None:
                for i in indices:
                    out[i] = body
        return out

    def indices(self, key: Any, count: int, mark: Mark | None, path: str) -> list[int] | None:
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
                self.err("E213", f"override key {key!r} is not an index, a list '3,7' or a range '0-2'", mark, path)
                return None
            except IndexError as exc:
                self.err("E213", str(exc), mark, path, f"valid indices are 0..{count - 1} (or -1 for the last)")
                return None
        normalised = []
        for i in out:
            j = i + count if i < 0 else i
            if not 0 <= j < count:
                self.err("E213", f"index {i} is out of range for a stack of {count} layers", mark, path, f"valid indices are 0..{count - 1} (or -1 for the last)")
                return None
            normalised.append(j)
        return normalised

    def refs(self, raw: Any, mark: Mark | None, scope: Mapping[str, Any], path: str) -> list[Ref]:
        value = self.value(raw, scope, mark, path)
        if value is _BAD:
            return []
        if isinstance(value, str):
            return [Ref(value, self.m(mark))]
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return [Ref(v, self.m(mark_of_item(value, i, mark))) for i, v in enumerate(value)]
        if isinstance(value, dict) and value and all(isinstance(v, str) for v in value.values()):
            return [Ref(v, self.m(value.mark_of(k) if isinstance(value, LDict) else mark), port=str(k)) for k, v in value.items()]
        self.err("E112", f"'in' must be a name, a list of names or a mapping port: name, got {_kind(value)}", mark, path)
        return []

    def ties(self, raw: Any, mark: Mark | None, path: str) -> dict[str, Ref]:
        table = self.expect_map(raw, mark, f"{path}.tie", "tie")
        out: dict[str, Ref] = {}
        for attr, target in (table or {}).items():
            if not isinstance(target, str) or "." not in target:
                self.err("E230", f"tie target {target!r} must read node.parameter, e.g. embed.weight", table.mark_of(attr), f"{path}.tie.{attr}")
                continue
            out[str(attr)] = Ref(target, self.m(table.mark_of(attr)))
        return out

    # ---- bodies and fragments -----------------------------------------------------------
    def body(
        self,
        raw: Any,
        mark: Mark | None,
        scope: Mapping[str, Any],
        base_dir: Path,
        path: str,
        extra_args: Any = None,
        node_overrides: Any = None,
    ) -> Body | None:
        raw = self.expect_map(raw, mark, path, "a body")
        if raw is None:
            return None
        self.check_keys(raw, BODY_KEYS, path, "a body")
        if "use" in raw:
            return self.fragment(raw, scope, base_dir, path, extra_args, node_overrides)
        if extra_args:
            self.err("E130", "'args' overrides need a body that uses a fragment (use:)", mark, path, "override nodes instead: at: {3: {nodes: {mix: {block: ...}}}}")
            return None
        return self.inline_body(raw, scope, base_dir, path, node_overrides)

    def inline_body(self, raw: LDict, scope: Mapping[str, Any], base_dir: Path, path: str, node_overrides: Any = None) -> Body | None:
        inputs_raw = raw.get("inputs")
        if not isinstance(inputs_raw, list) or not inputs_raw or not all(isinstance(i, str) for i in inputs_raw):
            self.err("E112", "a body needs 'inputs': a list of names, e.g. [x]", raw.mark_of("inputs"), f"{path}.inputs")
            return None
        inputs = list(inputs_raw)
        for i, name in enumerate(inputs):
            self.check_name(name, mark_of_item(inputs_raw, i, raw.mark), f"{path}.inputs")
        nodes_raw = raw.get("nodes")
        if node_overrides:
            nodes_raw = self.merge_node_overrides(nodes_raw, node_overrides, path)
            if nodes_raw is None:
                return None
        nodes = self.nodes(nodes_raw, raw.mark_of("nodes"), scope, base_dir, f"{path}.nodes")
        for name in inputs:
            if name in nodes:
                self.err("E200", f"{name!r} names both a body input and a node", nodes[name].mark, f"{path}.nodes.{name}", "rename the node")
        outputs = self.outputs(raw.get("outputs"), raw.mark_of("outputs"), f"{path}.outputs", required=True)
        return Body(inputs=inputs, nodes=nodes, outputs=outputs, mark=self.m(raw.mark))

    def merge_node_overrides(self, nodes_raw: Any, overrides: Any, path: str) -> LDict | None:
        if not isinstance(nodes_raw, LDict) or not isinstance(overrides, dict):
            self.err("E112", "'nodes' overrides must be a mapping node: {block: ..., args: {...}}", getattr(overrides, "mark", None) or self.override_mark, path)
            return None
        merged = LDict(nodes_raw, mark=nodes_raw.mark)
        merged.key_marks, merged.value_marks = dict(nodes_raw.key_marks), dict(nodes_raw.value_marks)
        for name, change in overrides.items():
            where = overrides.mark_of(name) if isinstance(overrides, LDict) else None
            if name not in nodes_raw:
                self.err("E210", f"override names node {name!r}, which the body does not have", where, f"{path}.nodes.{name}", did_you_mean(str(name), nodes_raw))
                continue
            if not isinstance(change, dict) or set(change) - {"block", "args"} or not isinstance(change.get("args") or {}, dict):
                self.err("E112", "a node override may set 'block' and 'args' (a mapping) only", where, f"{path}.nodes.{name}")
                continue
            base = nodes_raw[name]
            if isinstance(base, dict):  # else the node itself is malformed; resolving it reports why
                merged[name] = self.override_node(base, change)
        return merged

    def override_node(self, base: dict, change: dict) -> LDict:
        """``base`` (a node as written) with an override's already evaluated block and args."""
        node = _merge_marked(base)
        for key in ("block", "args"):
            if key not in change:
                continue
            node[key] = _Evaluated(change[key]) if key == "block" else _MergedArgs(base.get("args"), change[key] or {})
            if isinstance(change, LDict):
                node.value_marks[key] = change.mark_of(key)
        return node

    def fragment(self, raw: LDict, scope: Mapping[str, Any], base_dir: Path, path: str, extra_args: Any, node_overrides: Any) -> Body | None:
        use_mark = raw.mark_of("use")
        target = raw["use"]
        if not isinstance(target, str) or not target.endswith((".yaml", ".yml")):
            self.err("E130", f"'use' takes the path of a fragment file (.yaml), got {target!r}", use_mark, f"{path}.use")
            return None
        found = self.find_fragment(target, base_dir)
        if found is None:
            searched = ", ".join(str(d) for d in (base_dir, *self.fragment_dirs))
            self.err("E130", f"fragment {target!r} not found", use_mark, f"{path}.use", f"paths are relative to the blueprint's folder; searched: {searched}")
            return None
        if found in self.fragment_stack or len(self.fragment_stack) >= MAX_FRAGMENT_DEPTH:
            chain = " -> ".join(p.name for p in (*self.fragment_stack, found))
            self.err("E130", f"fragments use each other in a loop: {chain}", use_mark, f"{path}.use")
            return None
        args = self.value(raw.get("args"), scope, raw.mark_of("args"), f"{path}.args")
        if args is _BAD:
            return None
        if args is not None and not isinstance(args, dict):
            self.err("E112", f"fragment args must be a mapping, got {_kind(args)}", raw.mark_of("args"), f"{path}.args")
            return None
        given = (args or {}, extra_args or {})
        for table in given:
            self.string_keys(table, f"{path}.args", "argument")
        # Evaluated here, in the caller's scope: the fragment must not evaluate them again.
        args = {k: _Evaluated(v) for table in given for k, v in table.items() if isinstance(k, str)}
        doc = self.fragment_cache.get(found)
        if doc is None:
            try:
                doc = load_file(found, display_path(found, self.fragment_dirs))
            except BlueprintError as exc:  # locate the fragment's own errors, and where it is used
                for d in exc.diagnostics:
                    mark = Mark(d.mark.file, d.mark.line, d.mark.col, (*self.via, self.m(use_mark))) if d.mark else self.m(use_mark)
                    self.errors.add(d.code, d.message, mark, d.path, d.help)
                return None
            self.fragment_cache[found] = doc
        doc = self.expect_map(doc, use_mark, f"{path}.use", "a fragment")
        if doc is None:
            return None
        outer_via = self.via
        self.via = (*self.via, self.m(use_mark))
        self.fragment_stack.append(found)
        try:
            self.check_keys(doc, FRAGMENT_KEYS, "", "a fragment")
            self.version(doc, str(found), "fragment")
            frag_scope = self.params(doc.get("params"), doc.key_mark("params"), args, "params", f"args of {target}")
            body_raw = LDict({k: doc[k] for k in ("inputs", "nodes", "outputs") if k in doc}, mark=doc.mark)
            body_raw.key_marks, body_raw.value_marks = dict(doc.key_marks), dict(doc.value_marks)
            return self.inline_body(body_raw, frag_scope, found.parent, f"{path}.use", node_overrides)
        finally:
            self.fragment_stack.pop()
            self.via = outer_via

    def find_fragment(self, target: str, base_dir: Path) -> Path | None:
        for folder in (base_dir, *self.fragment_dirs):
            candidate = (folder / target).resolve()
            if candidate.is_file():
                return candidate
        return None

    # ---- outputs, taps, models ----------------------------------------------------------
    def outputs(self, raw: Any, mark: Mark | None, path: str, required: bool) -> dict[str, Ref]:
        if raw is None and required:
            self.err("E111", "missing 'outputs': name what the graph returns, e.g. outputs: {logits: head}", mark, path)
            return {}
        table = self.expect_map(raw, mark, path, "outputs")
        out: dict[str, Ref] = {}
        for name, target in (table or {}).items():
            if not isinstance(name, str) or not DOTTED.match(name):
                self.err("E200", f"output name {name!r} must be a name (dots allowed)", table.key_mark(name), path)
            elif not isinstance(target, str):
                self.err("E112", f"output {name!r} must name a node, got {_kind(target)}", table.mark_of(name), f"{path}.{name}")
            else:
                out[name] = Ref(target, self.m(table.mark_of(name)))
        return out

    def taps(self, raw: Any, mark: Mark | None, scope: Mapping[str, Any]) -> dict[str, TapDecl]:
        table = self.expect_map(raw, mark, "taps", "taps")
        out: dict[str, TapDecl] = {}
        for name, spec in (table or {}).items():
            path = f"taps.{name}"
            if not isinstance(name, str) or not DOTTED.match(name):
                self.err("E200", f"tap name {name!r} must be a name (dots allowed)", table.key_mark(name), "taps")
                continue
            reserved = [seg for seg in name.split(".") if not submodule_name_ok(seg)]
            if reserved:
                self.err("E200", f"tap name {name!r}: {reserved[0]!r} is a Python keyword or reserved name", table.key_mark(name), path, "a tap's projection becomes the module taps.<name>: rename it")
                continue
            if isinstance(spec, str):
                spec = LDict({"at": spec}, mark=table.mark_of(name))
            spec = self.expect_map(spec, table.mark_of(name), path, "a tap")
            if spec is None:
                continue
            self.check_keys(spec, TAP_KEYS, path, "a tap")
            if not isinstance(spec.get("at"), str):
                self.err("E111", "a tap needs 'at': the node(s) it reads, e.g. blocks.*.out", spec.mark, path)
                continue
            tap = TapDecl(name=name, at=spec["at"], mark=spec.mark_of("at"))
            if "project" in spec:
                project = self.value(spec["project"], scope, spec.mark_of("project"), f"{path}.project")
                if isinstance(project, int) and not isinstance(project, bool):
                    tap.project_block, tap.project_args = "stitch.linear", {"dim": project}
                elif isinstance(project, dict) and isinstance(project.get("block", "stitch.linear"), str) and isinstance(project.get("args") or {}, dict):
                    tap.project_block = project.get("block", "stitch.linear")
                    self.string_keys(project.get("args") or {}, f"{path}.project.args", "argument")
                    tap.project_args = dict(project.get("args") or {})
                elif project is not _BAD:
                    self.err("E112", "project must be a dimension (int) or {block: ..., args: {...}}", spec.mark_of("project"), f"{path}.project")
            out[name] = tap
        return out

    def models(self, raw: Any, mark: Mark | None, outputs: dict[str, Ref], taps: dict[str, TapDecl]) -> dict[str, ModelView]:
        table = self.expect_map(raw, mark, "models", "models")
        out: dict[str, ModelView] = {}
        for name, spec in (table or {}).items():
            path = f"models.{name}"
            spec = self.expect_map(spec, table.mark_of(name), path, "a model view")
            if spec is None:
                continue
            self.check_keys(spec, MODEL_KEYS, path, "a model view")
            view = ModelView(name=str(name), outputs=[], taps=[], mark=table.key_mark(name))
            for key, known, target in (("outputs", outputs, view.outputs), ("taps", taps, view.taps)):
                items = spec.get(key) or []
                if not isinstance(items, list):
                    self.err("E112", f"{key} must be a list of names", spec.mark_of(key), f"{path}.{key}")
                    continue
                for item in items:
                    if not isinstance(item, str):
                        self.err("E112", f"{key} must list names, got {_kind(item)}", spec.mark_of(key), f"{path}.{key}")
                    elif item not in known:
                        self.err("E210", f"model view names {key[:-1]} {item!r}, which the blueprint does not define", spec.mark_of(key), f"{path}.{key}", did_you_mean(str(item), known))
                    else:
                        target.append(item)
            if not spec.get("outputs"):
                self.err("E111", "a model view needs at least one output", spec.mark, path)
            out[view.name] = view
        return out


def _same_kind(default: Any, value: Any) -> bool:
    """Whether a ``--set`` value may replace a literal default: numbers for numbers, booleans for
    booleans, null for anything (a block's own default); an expression, or a default that is
    one, is checked where it is used."""
    if value is None or (isinstance(value, str) and is_expression(value)):
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


def _merge_marked(*tables: Mapping[Any, Any]) -> LDict:
    """The tables merged left to right, keeping the marks of the ones that have them."""
    out = LDict(mark=next((t.mark for t in tables if isinstance(t, LDict)), None))
    for table in tables:
        for key, value in table.items():
            out[key] = value
            out.key_marks.pop(key, None)
            out.value_marks.pop(key, None)
            if isinstance(table, LDict):
                out.key_marks[key] = table.key_mark(key)
                out.value_marks[key] = table.mark_of(key)
    return out


def mark_of_item(container: Any, index: int, default: Mark | None) -> Mark | None:
    return container.mark_of(index) if isinstance(container, LList) else default


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def display_path(path: Path, shipped_dirs: tuple[Path, ...] = ()) -> str:
    """How errors name a file: relative to the working directory, or ``blueprints/...`` for
    a shipped one, else absolute."""
    path = path.resolve()
    for base, prefix in ((Path.cwd(), ""), *((d.resolve(), "blueprints/") for d in shipped_dirs)):
        try:
            return prefix + str(path.relative_to(base))
        except ValueError:
            continue
    return str(path)
