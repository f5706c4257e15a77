"""The hooks a plugin may implement (pluggy project name ``ssmgraph``).

Each hook *returns* records rather than receiving a registry: implementations stay pure
(``list(plugin.ssmgraph_blocks())`` in a test) and the host calls them one plugin at a
time, so every record and every failure is attributed to the package it came from.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ssmgraph.registry.specs import BlockSpec, MergeMethodSpec, TaskSpec

PROJECT = "ssmgraph"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ssmgraph_blocks() -> Iterable[BlockSpec]:
    """Return the block specs this plugin provides.

    Example::

        from ssmgraph.plugin import BlockSpec, hookimpl

        @hookimpl
        def ssmgraph_blocks():
            return [BlockSpec(name="mix.my_mixer", role="mix", ...)]
    """


@hookspec
def ssmgraph_tasks() -> Iterable[TaskSpec]:
    """Return the training tasks this plugin provides (``ssmgraph train --task NAME``)."""


@hookspec
def ssmgraph_merge_methods() -> Iterable[MergeMethodSpec]:
    """Return the merge methods this plugin provides (``merge_method:`` in a merge recipe).

    Example (the implementation is imported when a recipe runs the method)::

        from ssmgraph.plugin import MergeMethodSpec, hookimpl

        @hookimpl
        def ssmgraph_merge_methods():
            return [MergeMethodSpec(name="my_merge", doc="...", params=(...), needs="same_shape", run="my_package.merge:run")]
    """
