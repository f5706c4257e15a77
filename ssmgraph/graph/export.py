"""Pictures of a compiled graph: Graphviz dot, Mermaid, and SVG/PNG through Graphviz."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ssmgraph.errors import SsmgraphError
from ssmgraph.graph.model import CompiledModel

FORMATS = (".dot", ".gv", ".mmd", ".md", ".svg", ".png")


_KEYWORDS = frozenset(
    {
        "node",
        "edge",
        "graph",
        "digraph",
        "subgraph",
        "strict",
        "end",
        "flowchart",
        "style",
        "class",
        "classdef",
        "click",
        "linkstyle",
        "direction",
    }
)
"""Words Graphviz or Mermaid read as statements, not node ids (case-insensitively): a node may be named so."""


def _ids(model: CompiledModel) -> dict[str, str]:
    """A readable, unique node id per input, node and output (``out:<name>``): dots become
    underscores, keywords get a ``_``, and an id already taken (``a.b`` and ``a_b``) a number."""
    ids: dict[str, str] = {}
    taken: set[str] = set()
    for value in [*model.input_types, *model.nodes, *(f"out:{name}" for name in model.outputs)]:
        base = value.replace("out:", "out_", 1).replace(".", "_")
        base = f"{base}_" if base.lower() in _KEYWORDS else base
        ident, n = base, 2
        while ident in taken:
            ident, n = f"{base}_{n}", n + 1
        ids[value] = ident
        taken.add(ident)
    return ids


def _shape(model: CompiledModel, value: str) -> str:
    ttype = model.nodes[value].out_type if value in model.nodes else model.input_types[value]
    return "×".join(str(d) for d in ttype.shape)


def to_dot(model: CompiledModel) -> str:
    ids = _ids(model)
    lines = [f'digraph "{model.blueprint.name}" {{', "  rankdir=TB;", '  node [shape=box, fontname="Helvetica"];']
    for name in model.input_types:
        lines.append(f'  {ids[name]} [label="{name}\\n{_shape(model, name)}", shape=oval];')
    for path, info in model.nodes.items():
        lines.append(f'  {ids[path]} [label="{path}\\n{info.block}\\n{_shape(model, path)}"];')
        for source in info.inputs:
            lines.append(f"  {ids[source]} -> {ids[path]};")
    for name, value in model.outputs.items():
        lines.append(f'  {ids["out:" + name]} [label="{name}", shape=oval];')
        lines.append(f"  {ids[value]} -> {ids['out:' + name]};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(model: CompiledModel) -> str:
    ids = _ids(model)
    lines = ["flowchart TD"]
    for name in model.input_types:
        lines.append(f'  {ids[name]}(["{name} {_shape(model, name)}"])')
    for path, info in model.nodes.items():
        lines.append(f'  {ids[path]}["{path}<br/>{info.block}<br/>{_shape(model, path)}"]')
        for source in info.inputs:
            lines.append(f"  {ids[source]} --> {ids[path]}")
    for name, value in model.outputs.items():
        lines.append(f'  {ids["out:" + name]}(["{name}"])')
        lines.append(f"  {ids[value]} --> {ids['out:' + name]}")
    return "\n".join(lines) + "\n"


def write_graph(model: CompiledModel, path: Path) -> Path:
    """Write the graph in the format the suffix names (.dot, .mmd, .svg, .png)."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise SsmgraphError(f"--graph {path}: unknown format {suffix!r}; use one of {', '.join(FORMATS)}")
    if not path.parent.is_dir():
        raise SsmgraphError(f"--graph {path}: the folder {path.parent} does not exist; create it or write the picture elsewhere")
    if path.is_dir():
        raise SsmgraphError(f"--graph {path}: is a folder; name a file, e.g. {path / ('graph' + suffix)}")
    if suffix in (".dot", ".gv"):
        path.write_text(to_dot(model), encoding="utf-8")
    elif suffix in (".mmd", ".md"):
        text = to_mermaid(model)
        path.write_text(f"```mermaid\n{text}```\n" if suffix == ".md" else text, encoding="utf-8")
    else:
        dot = shutil.which("dot")
        if dot is None:
            raise SsmgraphError(
                f"--graph {path}: drawing {suffix} needs Graphviz's `dot` program (apt-get install graphviz); or write .dot or .mmd instead"
            )
        result = subprocess.run(
            [dot, f"-T{suffix[1:]}", "-o", str(path)], input=to_dot(model), text=True, capture_output=True, check=False
        )
        if result.returncode != 0:
            raise SsmgraphError(f"--graph {path}: graphviz failed: {result.stderr.strip()}")
    return path
