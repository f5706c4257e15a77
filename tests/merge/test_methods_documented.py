"""docs/merging.md's method reference lists every built-in merge method with every parameter of
its spec: the name, the type and the default (read back as YAML)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ssmgraph.merge.compatibility import Compatibility
from ssmgraph.registry.plugins import get_registry

DOCS = Path(__file__).resolve().parents[2] / "docs" / "merging.md"


def _reference() -> dict[str, str]:
    """``### `method``` subsection of the method reference -> its text."""
    text = DOCS.read_text(encoding="utf-8").split("## Method reference", 1)[1].split("\n## ", 1)[0]
    parts = re.split(r"^### `(\w+)`$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


def _builtin() -> list:
    return [spec for spec in get_registry().merge_methods.values() if spec.plugin == "ssmgraph"]


def test_every_builtin_method_has_a_subsection_and_a_summary_row() -> None:
    reference = _reference()
    names = [spec.name for spec in _builtin()]
    mergekit = {"model_stock", "della", "della_linear", "breadcrumbs", "breadcrumbs_ties", "sce", "nearswap", "nuslerp"}
    mergekit |= {"multislerp", "karcher"}
    assert (
        set(names)
        == {"linear", "task_arithmetic", "ties", "dare", "slerp", "mutual", "distill", "stitch", "superpose"} | mergekit
    )
    assert sorted(reference) == sorted(names)
    summary = DOCS.read_text(encoding="utf-8").split("## Method reference", 1)[1].split("### ", 1)[0]
    for spec in _builtin():
        assert f"| `{spec.name}` | {Compatibility(spec.needs).label} |" in summary, spec.name


def test_every_parameter_is_documented_with_its_type_and_default() -> None:
    reference = _reference()
    for spec in _builtin():
        rows = {}
        for line in reference[spec.name].splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 5 and cells[0].startswith("`") and cells[0] != "`parameter`":
                rows[cells[0].strip("`")] = cells
        assert list(rows) == [p.name for p in spec.params], spec.name
        for param in spec.params:
            _, type_name, default, _, meaning = rows[param.name]
            assert type_name == param.type_name, (spec.name, param.name)
            if param.required:
                assert default == "required", (spec.name, param.name)
            else:
                assert yaml.safe_load(default.strip("`")) == param.default, (spec.name, param.name)
            assert meaning == param.doc, (spec.name, param.name)
