"""What the registry knows about each plugin, and the two ways a plugin can be refused: a
failure (:class:`PluginError`) and a name that two plugins provide (:class:`Clash`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ssmgraph.errors import SsmgraphError


class PluginError(SsmgraphError):
    """A plugin problem that stops what was asked: a strict-mode failure, a name two plugins
    provide, an implementation that cannot be imported."""

    code = "E300"


@dataclass
class PluginRecord:
    """One plugin, loaded or not, and what it provides (shown by ``ssmgraph plugins``)."""

    name: str
    dist: str
    version: str
    status: str  # "loaded", "failed", "disabled"
    error: str = ""
    blocks: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    merge_methods: list[str] = field(default_factory=list)
    clashes: list[str] = field(default_factory=list)
    """Names it provides that another plugin provides too (neither is used)."""
    entry_point: str = ""
    builtin: bool = False

    @property
    def who(self) -> str:
        """How messages name it: ``plugin 'liquid' (ssmgraph-liquid 0.1.0)``."""
        return f"plugin {self.name!r} ({self.dist} {self.version})"

    @property
    def switch(self) -> str:
        """What ``SSMGRAPH_DISABLE_PLUGINS`` takes to skip it: the entry point's name, or the
        package's when two packages name their entry points alike (kept as ``dist:name``)."""
        return self.dist if ":" in self.name else self.name

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "package": self.dist,
            "version": self.version,
            "status": self.status,
            "error": self.error or None,
            "blocks": list(self.blocks),
            "tasks": list(self.tasks),
            "merge_methods": list(self.merge_methods),
            "clashes": list(self.clashes),
            "entry_point": self.entry_point or None,
            "builtin": self.builtin,
        }


@dataclass(frozen=True)
class Clash:
    """A name that several plugins provide. Neither provider is used: the registry warns,
    everything else works, and only a use of the name (a blueprint's block, a task, a merge
    method) is refused, with :meth:`error`."""

    what: str  # "block", "task", "merge method"
    name: str
    providers: tuple[PluginRecord, ...]

    @property
    def message(self) -> str:
        times = "twice" if len(self.providers) == 2 else f"{len(self.providers)} times"
        by = " and by ".join(f"{p.name} ({p.dist} {p.version})" for p in self.providers)
        return f"{self.what} {self.name!r} is provided {times}: by {by}"

    @property
    def remedy(self) -> str:
        switches = [p.switch for p in self.providers if not p.builtin]
        if not switches:
            return "two of ssmgraph's own modules provide it: please report this"
        return "uninstall one of them or disable it with " + " or ".join(f"SSMGRAPH_DISABLE_PLUGINS={s}" for s in switches)

    @property
    def warning(self) -> str:
        return f"{self.message}; neither is used, and what uses it is refused until you {self.remedy}"


class ClashError(PluginError):
    """A use of a name that several plugins provide."""

    def __init__(self, clash: Clash):
        super().__init__(f"{clash.message}; {clash.remedy}")
        self.clash = clash
