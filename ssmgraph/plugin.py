"""Everything a plugin needs, in one module: ``from ssmgraph.plugin import ...``.

A plugin provides blocks, training tasks or merge methods by returning specs from hooks
(docs/plugins.md). Import from here only: these names stay, while the modules they live in
(``ssmgraph.registry``, ``ssmgraph.train``, ``ssmgraph.merge``, ...) may move.

- hooks and specs: :data:`hookimpl`, :class:`BlockSpec`, :class:`TaskSpec`, :class:`MergeMethodSpec`,
  :class:`Param` (:data:`REQUIRED`), :func:`get_registry`;
- block shapes: :class:`TensorType`, :class:`ShapeError`, :func:`same_as_input`, :class:`Capabilities`;
- permutation spaces: :class:`PermSpace`, :class:`PermAxis`, :func:`rows_of`, :func:`input_space`,
  ``INPUT_SPACE``, ``OUTPUT_SPACE``, ``THROUGH_SPACE``;
- tasks: :class:`Task`, :class:`Batch`, ``IGNORE``;
- merge methods: :class:`MergeContext`, :class:`MergeResult`, :class:`MergeError`, :class:`LoadedModel`;
- the conformance kit: :func:`check_block`, :func:`parametrize_block_checks`, :func:`make_case`,
  :class:`BlockCase`, :class:`Report`, :class:`ConformanceError`, ``CHECK_NAMES``.

The merge names are imported when first used: every command imports the installed plugins,
and so this module, while only a merge needs the merge machinery (as a merge method's spec
names its implementation ``"module:function"``, imported when it runs).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ssmgraph.registry.hookspecs import hookimpl
from ssmgraph.registry.params import REQUIRED, Param
from ssmgraph.registry.plugins import get_registry
from ssmgraph.registry.specs import (
    INPUT_SPACE,
    OUTPUT_SPACE,
    THROUGH_SPACE,
    BlockSpec,
    Capabilities,
    MergeMethodSpec,
    PermAxis,
    PermSpace,
    ShapeError,
    TaskSpec,
    TensorType,
    input_space,
    rows_of,
    same_as_input,
)
from ssmgraph.testing import CHECK_NAMES, BlockCase, ConformanceError, Report, check_block, make_case, parametrize_block_checks
from ssmgraph.train.tasks.base import IGNORE, Batch, Task

if TYPE_CHECKING:
    from ssmgraph.merge.context import MergeContext, MergeError, MergeResult
    from ssmgraph.merge.models import LoadedModel

_ON_FIRST_USE = {
    "LoadedModel": "ssmgraph.merge.models",
    "MergeContext": "ssmgraph.merge.context",
    "MergeError": "ssmgraph.merge.context",
    "MergeResult": "ssmgraph.merge.context",
}

__all__ = [
    "CHECK_NAMES",
    "IGNORE",
    "INPUT_SPACE",
    "OUTPUT_SPACE",
    "REQUIRED",
    "THROUGH_SPACE",
    "Batch",
    "BlockCase",
    "BlockSpec",
    "Capabilities",
    "ConformanceError",
    "LoadedModel",
    "MergeContext",
    "MergeError",
    "MergeMethodSpec",
    "MergeResult",
    "Param",
    "PermAxis",
    "PermSpace",
    "Report",
    "ShapeError",
    "Task",
    "TaskSpec",
    "TensorType",
    "check_block",
    "get_registry",
    "hookimpl",
    "input_space",
    "make_case",
    "parametrize_block_checks",
    "rows_of",
    "same_as_input",
]


def __getattr__(name: str) -> Any:
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module 'ssmgraph.plugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(_ON_FIRST_USE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
