"""Marked YAML values → a typed :class:`Blueprint`.

Resolution runs in this order, over the values the strict YAML reader (or
:func:`~ssmgraph.blueprint.keypaths.marked`, for a Python mapping) marked with where they came from:

1. **document** — the top-level keys and the format version (``ssmgraph: 1``);
2. **params** — evaluated top to bottom into the scope that ``$`` expressions see, with the
   caller's overrides (``--set``) in place of the defaults (values.py);
3. **inputs** — names, dtypes and symbolic shapes;
4. **nodes** — each node checked and its expressions evaluated (nodes.py); a node with a
   sub-graph resolves it here: an inline body, a fragment (``use:``, in its own scope), a
   ``repeat`` stack and each of its ``at:`` overrides as a whole body (stacks.py);
5. **outputs, taps, models** — what the graph returns, the named features, the views.

Each part reads a value together with a :class:`~ssmgraph.blueprint.values.Where`: its key
path, mark, scope and folder. Every problem found is collected with its mark; the phase ends
with one :class:`BlueprintError` listing them all. Block names and block parameters are *not*
checked here: that needs the registry and is the graph compiler's first phase.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ssmgraph.blueprint.document import Blueprint, Body, InputDecl, ModelView, Ref, TapDecl
from ssmgraph.blueprint.names import DOTTED, IDENT, submodule_name_ok
from ssmgraph.blueprint.nodes import NodeResolver
from ssmgraph.blueprint.values import BAD, Where, kind_of
from ssmgraph.blueprint.yamlsafe import LDict
from ssmgraph.errors import Collector, Mark, did_you_mean

TOP_KEYS = ("ssmgraph", "kind", "name", "doc", "params", "inputs", "nodes", "outputs", "taps", "models", "align")
INPUT_KEYS = ("dtype", "shape", "doc")
TAP_KEYS = ("at", "project", "doc")
MODEL_KEYS = ("outputs", "taps", "doc")
DTYPES = {"int64": "int", "int": "int", "long": "int", "float32": "float", "float": "float"}


def resolve(
    raw: Any,
    source: str,
    base_dir: Path,
    overrides: Mapping[str, Any],
    fragment_dirs: tuple[Path, ...],
    *,
    name: str | None = None,
) -> Blueprint:
    """The blueprint of the marked document ``raw`` (named ``source`` in errors; ``use:`` paths
    start from ``base_dir``, then ``fragment_dirs``); ``name`` when it has no ``name:``.
    Raises one :class:`BlueprintError` with every problem found."""
    errors = Collector()
    blueprint = Resolver(errors, fragment_dirs).blueprint(raw, source, base_dir, overrides, name=name)
    errors.raise_if_any()
    return blueprint


class Resolver(NodeResolver):
    """One blueprint's resolution; its problems go to the ``errors`` it is given."""

    def blueprint(
        self, raw: Any, source: str, base_dir: Path, overrides: Mapping[str, Any], *, name: str | None = None
    ) -> Blueprint:
        if not isinstance(raw, dict):
            what = "empty" if raw is None else f"{kind_of(raw)}, not a mapping"
            mark = getattr(raw, "mark", None) or Mark(source, 1, 1)
            self.report(
                "E111" if raw is None else "E112",
                f"the file is {what}; a blueprint is a mapping that starts with 'ssmgraph: 1'",
                mark,
                "",
            )
            self.errors.raise_if_any()
        doc = raw if isinstance(raw, LDict) else LDict(raw, mark=Mark(source, 1, 1))
        self.check_keys(doc, TOP_KEYS, "", "a blueprint")
        self.version(doc, source, "blueprint")
        top = Where("", doc.mark, {}, base_dir)
        scope = self.params(doc.get("params"), top.key("params", doc.key_mark("params")), overrides, "--set")
        top = Where("", doc.mark, scope, base_dir)
        inputs = self.inputs(doc.get("inputs"), top.key("inputs", doc.mark_of("inputs")))
        nodes = self.nodes(doc.get("nodes"), top.key("nodes", doc.mark_of("nodes")))
        outputs = self.outputs(doc.get("outputs"), doc.mark_of("outputs"), "outputs", required=True)
        taps = self.taps(doc.get("taps"), top.key("taps", doc.mark_of("taps")))
        models = self.models(doc.get("models"), doc.mark_of("models"), outputs, taps)
        align = doc.get("align") or []
        return Blueprint(
            name=str(doc.get("name", name or Path(source).stem)),
            source=source,
            params=scope,
            inputs=inputs,
            body=Body(inputs=list(inputs), nodes=nodes, outputs=outputs, mark=doc.mark),
            taps=taps,
            models=models,
            align=list(align) if isinstance(align, list) else [align],
            doc=str(doc.get("doc", "") or ""),
        )

    def inputs(self, raw: Any, where: Where) -> dict[str, InputDecl]:
        table = self.expect_map(raw, where.mark, where.path, "inputs")
        out: dict[str, InputDecl] = {}
        if table is None:
            return out
        if not table:
            self.report(
                "E111",
                "a blueprint needs at least one input",
                where.mark,
                where.path,
                "e.g. inputs: {tokens: {dtype: int64, shape: [batch, seq]}}",
            )
        for name, spec in table.items():
            entry = where.key(name, table.mark_of(name))
            if not self.check_name(name, table.key_mark(name), entry.path):
                continue
            spec = self.expect_map(spec, entry.mark, entry.path, "an input")
            if spec is None:
                continue
            self.check_keys(spec, INPUT_KEYS, entry.path, "an input")
            dtype_raw = spec.get("dtype", "int64")
            dtype = DTYPES.get(dtype_raw) if isinstance(dtype_raw, str) else None
            if dtype is None:
                self.report(
                    "E112",
                    f"dtype {dtype_raw!r} is not one of int64, float32",
                    spec.mark_of("dtype"),
                    f"{entry.path}.dtype",
                    did_you_mean(str(dtype_raw), DTYPES),
                )
                continue
            shape_where = entry.key("shape", spec.mark_of("shape"))
            shape = self.shape(self.value(spec.get("shape", ["batch", "seq"]), shape_where), dtype, shape_where)
            if shape is not None:
                out[name] = InputDecl(name, dtype, shape, table.key_mark(name))
        return out

    def shape(self, value: Any, dtype: str, where: Where) -> tuple[int | str, ...] | None:
        if value is BAD:
            return None
        if not isinstance(value, list) or not value:
            self.report("E112", f"shape must be a non-empty list like [batch, seq], got {kind_of(value)}", where.mark, where.path)
            return None
        dims: list[int | str] = []
        for d in value:
            if d is BAD:  # a bad expression inside the shape: reported where it was evaluated
                return None
            if (
                isinstance(d, bool)
                or not isinstance(d, (int, str))
                or (isinstance(d, int) and d < 1)
                or (isinstance(d, str) and not IDENT.match(d))
            ):
                self.report(
                    "E112", f"dimension {d!r} must be a positive integer or a name such as 'batch'", where.mark, where.path
                )
                return None
            dims.append(d)
        if dtype == "float" and not isinstance(dims[-1], int):
            self.report(
                "E112",
                "a float input needs its feature size as the last dimension, e.g. [batch, seq, 16]",
                where.mark,
                where.path,
            )
            return None
        return tuple(dims)

    def taps(self, raw: Any, where: Where) -> dict[str, TapDecl]:
        table = self.expect_map(raw, where.mark, where.path, "taps")
        out: dict[str, TapDecl] = {}
        for name, spec in (table or {}).items():
            path = f"taps.{name}"
            if not isinstance(name, str) or not DOTTED.match(name):
                self.report("E200", f"tap name {name!r} must be a name (dots allowed)", table.key_mark(name), "taps")
                continue
            reserved = [seg for seg in name.split(".") if not submodule_name_ok(seg)]
            if reserved:
                self.report(
                    "E200",
                    f"tap name {name!r}: {reserved[0]!r} is a Python keyword or reserved name",
                    table.key_mark(name),
                    path,
                    "a tap's projection becomes the module taps.<name>: rename it",
                )
                continue
            if isinstance(spec, str):
                spec = LDict({"at": spec}, mark=table.mark_of(name))
            spec = self.expect_map(spec, table.mark_of(name), path, "a tap")
            if spec is None:
                continue
            self.check_keys(spec, TAP_KEYS, path, "a tap")
            if not isinstance(spec.get("at"), str):
                self.report("E111", "a tap needs 'at': the node(s) it reads, e.g. blocks.*.out", spec.mark, path)
                continue
            tap = TapDecl(name=name, at=spec["at"], mark=spec.mark_of("at"))
            if "project" in spec:
                self.projection(
                    tap, spec["project"], where.key(name, table.mark_of(name)).key("project", spec.mark_of("project"))
                )
            out[name] = tap
        return out

    def projection(self, tap: TapDecl, raw: Any, where: Where) -> None:
        """Fill ``tap``'s projection: a width (``project: 64``) or ``{block: ..., args: {...}}``."""
        project = self.value(raw, where)
        if isinstance(project, int) and not isinstance(project, bool):
            tap.project_block, tap.project_args = "stitch.linear", {"dim": project}
        elif (
            isinstance(project, dict)
            and isinstance(project.get("block", "stitch.linear"), str)
            and isinstance(project.get("args") or {}, dict)
        ):
            tap.project_block = project.get("block", "stitch.linear")
            self.string_keys(project.get("args") or {}, f"{where.path}.args", "argument")
            tap.project_args = dict(project.get("args") or {})
        elif project is not BAD:
            self.report("E112", "project must be a dimension (int) or {block: ..., args: {...}}", where.mark, where.path)

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
                    self.report("E112", f"{key} must be a list of names", spec.mark_of(key), f"{path}.{key}")
                    continue
                for item in items:
                    if not isinstance(item, str):
                        self.report("E112", f"{key} must list names, got {kind_of(item)}", spec.mark_of(key), f"{path}.{key}")
                    elif item not in known:
                        self.report(
                            "E210",
                            f"model view names {key[:-1]} {item!r}, which the blueprint does not define",
                            spec.mark_of(key),
                            f"{path}.{key}",
                            did_you_mean(str(item), known),
                        )
                    else:
                        target.append(item)
            if not spec.get("outputs"):
                self.report("E111", "a model view needs at least one output", spec.mark, path)
            out[view.name] = view
        return out
