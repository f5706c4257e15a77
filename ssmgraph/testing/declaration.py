"""The spec itself: well-formed, documented, and consistent with the functions it names.

A mistake in a spec (a ``Param`` whose name the factory does not take, an ``examples`` entry
naming no parameter) is the plugin author's to fix, so it is reported at the spec: the file
and line that declare it, and the block's name, rather than wherever it first breaks inside
ssmgraph.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ssmgraph.errors import did_you_mean
from ssmgraph.registry.specs import BlockSpec

if TYPE_CHECKING:
    from ssmgraph.testing.cases import BlockCase


def spec_location(spec: BlockSpec) -> str:
    """Where ``spec`` is declared, as ``path:line: block``: the line of its module that names the
    block (else its factory's first line); the block name alone when there is no source."""
    try:
        path = inspect.getsourcefile(spec.factory)
        lines, first = inspect.findsource(spec.factory)
    except (OSError, TypeError):
        module = getattr(spec.factory, "__module__", None)
        return f"{spec.name} (from module {module})" if module else spec.name
    quoted = (f'"{spec.name}"', f"'{spec.name}'")
    line = next((i for i, text in enumerate(lines, 1) if any(q in text for q in quoted)), first + 1)
    return f"{path}:{line}: {spec.name}"


def unknown_arguments(spec: BlockSpec, args: Mapping[str, Any]) -> tuple[list[str], str]:
    """The names in ``args`` that are no parameter of ``spec``, and a remark listing its
    parameters with a suggestion."""
    unknown = [name for name in args if spec.param(name) is None]
    known = [p.name for p in spec.params]
    hint = did_you_mean(unknown[0], known) if unknown and known else ""
    return unknown, f"(its parameters: {', '.join(known) or 'none'})" + (f"; {hint}" if hint else "")


def _keywords(fn: Callable[..., Any]) -> tuple[set[str], set[str]] | None:
    """(keywords ``fn`` takes after its first argument, those it needs); None when it takes any."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())[1:]  # the first is in_types
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return {p.name for p in named}, {p.name for p in named if p.default is p.empty}


def signature_problems(spec: BlockSpec) -> list[str]:
    """Parameters the spec declares that its factory or shape rule does not take, and keywords
    they need that no ``Param`` declares (a typo in either, found before anything is built)."""
    declared = [p.name for p in spec.params]
    problems = []
    for what, fn in (("factory", spec.factory), ("shape rule", spec.shape)):
        keywords = _keywords(fn)
        if keywords is None:
            continue
        takes, needs = keywords
        label = f"{what} {getattr(fn, '__qualname__', type(fn).__name__)}"
        for name in declared:
            if name not in takes:
                hint = did_you_mean(name, takes) if takes else "it takes no keyword"
                problems.append(f"parameter {name!r} is declared, but the {label} takes no keyword {name!r} ({hint})")
        problems += [f"the {label} needs keyword {name!r}, which no Param declares" for name in sorted(needs - set(declared))]
    return problems


def check_spec(case: BlockCase) -> None:
    problems = case.spec.validate()
    if problems:
        raise AssertionError("malformed spec: " + "; ".join(problems))


def check_documented(case: BlockCase) -> None:
    spec, problems = case.spec, []
    if len(spec.doc.split()) < 3:
        problems.append(f"the spec's doc {spec.doc!r} does not say what the block computes")
    if not spec.reference:
        problems.append("no reference (the paper or code the block follows; 'ssmgraph' for an original design)")
    problems += [f"parameter {p.name!r} has no doc" for p in spec.params if len(p.doc.split()) < 2]
    if problems:
        raise AssertionError("; ".join(problems))
