"""What expansion produces: the flat graph of block calls, its taps, and the chains that
shares and ties follow."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import networkx as nx

from ssmgraph.blueprint.document import NodeDecl
from ssmgraph.errors import Mark

K = TypeVar("K", bound=Hashable)


@dataclass
class GraphNode:
    """One block call in the expanded graph."""

    path: str
    decl: NodeDecl
    block: str
    args: dict[str, Any]
    inputs: list[tuple[str | None, str]] = field(default_factory=list)
    """(port, value id) per input, in the order written."""
    module_path: str = ""
    ties: list[tuple[str, str, str, Mark | None]] = field(default_factory=list)
    """(own attribute, target node path, target attribute, mark)."""
    share_of: str | None = None
    broken: bool = False
    """An input or ``share`` reference failed to resolve (already reported)."""

    @property
    def mark(self) -> Mark | None:
        return self.decl.mark


@dataclass
class TapInstance:
    name: str
    value: str
    project_block: str | None
    project_args: dict[str, Any]
    mark: Mark | None


@dataclass
class Expanded:
    graph: nx.DiGraph
    nodes: dict[str, GraphNode]
    outputs: dict[str, str]
    taps: dict[str, TapInstance]
    input_names: list[str]


def follow_chain(start: K, links: Mapping[K, K]) -> tuple[K, list[K] | None]:
    """Follow ``links`` from ``start`` (which has one) to a key that has none: (that key, None);
    or, when the chain comes back to a key it passed, (that key, the loop). Shares and ties
    both chain this way."""
    chain, key = [start], links[start]
    while key in links and key not in chain:
        chain.append(key)
        key = links[key]
    return (key, chain[chain.index(key) :]) if key in chain else (key, None)
