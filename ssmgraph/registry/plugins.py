"""The plugin host: built-ins and entry points, each loaded and called in isolation.

pluggy's ``load_setuptools_entrypoints`` lets one broken plugin take down every command, so
entry points of group ``ssmgraph`` are loaded here one at a time: a failure is recorded with
the distribution's name and version and the plugin is skipped. Hook implementations are
also called one plugin at a time, so every record is attributed to its plugin and a plugin
that raises or returns a malformed record is reported, not fatal.

Environment switches:
  SSMGRAPH_DISABLE_PLUGIN_AUTOLOAD=1   load built-ins only (no entry points)
  SSMGRAPH_PLUGINS=a,b                 load only these entry-point plugins
  SSMGRAPH_DISABLE_PLUGINS=a,b         skip these entry-point plugins
  SSMGRAPH_STRICT_PLUGINS=1            raise on a plugin failure instead of skipping it
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import traceback
from dataclasses import dataclass, field, replace
from typing import Any

import pluggy

from ssmgraph.errors import SsmgraphError, did_you_mean
from ssmgraph.registry import hookspecs
from ssmgraph.registry.specs import BlockSpec, MergeMethodSpec, TaskSpec
from ssmgraph.train.tasks import BUILTIN_TASK_PLUGINS

ENTRY_POINT_GROUP = "ssmgraph"
BUILTIN_PLUGINS: tuple[str, ...] = (
    "ssmgraph.blocks.structural",
    "ssmgraph.blocks.embed",
    "ssmgraph.blocks.norm",
    "ssmgraph.blocks.ffn",
    "ssmgraph.blocks.attention",
    "ssmgraph.blocks.lstm",
    "ssmgraph.blocks.heads",
    "ssmgraph.blocks.stitch",
    "ssmgraph.blocks.s4",
    "ssmgraph.blocks.s4d",
    "ssmgraph.blocks.s5",
    "ssmgraph.blocks.h3",
    "ssmgraph.blocks.gated_mlp",
    "ssmgraph.blocks.mamba",
    "ssmgraph.blocks.blend",
    *BUILTIN_TASK_PLUGINS,
    "ssmgraph.merge.builtin",
)


_RECORD_HOOKS: tuple[tuple[str, type, str, str], ...] = (
    # (hook, record type, what it is called in messages, table on the Registry and PluginRecord)
    ("ssmgraph_blocks", BlockSpec, "block", "blocks"),
    ("ssmgraph_tasks", TaskSpec, "task", "tasks"),
    ("ssmgraph_merge_methods", MergeMethodSpec, "merge method", "merge_methods"),
)


class PluginError(SsmgraphError):
    """A plugin problem that cannot be skipped (a duplicate name, strict mode)."""

    code = "E300"


@dataclass
class PluginRecord:
    """What we know about one plugin, loaded or not (shown by ``ssmgraph plugins``)."""

    name: str
    dist: str
    version: str
    status: str  # "loaded", "failed", "disabled"
    error: str = ""
    blocks: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    merge_methods: list[str] = field(default_factory=list)
    entry_point: str = ""
    builtin: bool = False

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
            "entry_point": self.entry_point or None,
            "builtin": self.builtin,
        }


def _env_list(name: str) -> set[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "unknown"


class Registry:
    """Blocks from every plugin, by name. Build one with :func:`get_registry`."""

    def __init__(self, manager: pluggy.PluginManager | None = None, *, autoload: bool | None = None):
        self.pm = manager or pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginRecord] = {}
        self.blocks: dict[str, BlockSpec] = {}
        self.tasks: dict[str, TaskSpec] = {}
        self.merge_methods: dict[str, MergeMethodSpec] = {}
        self.problems: list[str] = []
        self.strict = os.environ.get("SSMGRAPH_STRICT_PLUGINS") == "1"
        if autoload is None:
            autoload = os.environ.get("SSMGRAPH_DISABLE_PLUGIN_AUTOLOAD") != "1"
        for module_name in BUILTIN_PLUGINS:
            self.register(importlib.import_module(module_name), module_name, "ssmgraph", _version("ssmgraph"))
            self.plugins[module_name].builtin = True
        if autoload:
            self.load_entry_points()
        self.collect()

    # ---- loading ------------------------------------------------------------------------
    def register(self, plugin: object, name: str, dist: str, version: str, entry_point: str = "") -> None:
        """Register a plugin object (module or instance) under ``name``."""
        if self.pm.is_registered(plugin):
            return
        if self.pm.has_plugin(name):
            other = self.plugins[name]
            self.fail(PluginRecord(f"{dist}:{name}", dist, version, "failed", f"the name {name!r} is taken by {other.dist} {other.version}", entry_point=entry_point))
            return
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            self.fail(PluginRecord(name, dist, version, "failed", f"invalid hook implementation: {exc}", entry_point=entry_point))
            return
        self.plugins[name] = PluginRecord(name, dist, version, "loaded", entry_point=entry_point)

    def load_entry_points(self) -> None:
        allow = _env_list("SSMGRAPH_PLUGINS")
        deny = _env_list("SSMGRAPH_DISABLE_PLUGINS") or set()
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else ep.name
            version = ep.dist.version if ep.dist else "unknown"
            # two distributions may both name their entry point e.g. "blocks": the second is kept under "dist:name"
            name = f"{dist}:{ep.name}" if ep.name in self.plugins and self.plugins[ep.name].dist != dist else ep.name
            if (allow is not None and ep.name not in allow and dist not in allow) or ep.name in deny or dist in deny:
                self.plugins[name] = PluginRecord(name, dist, version, "disabled", entry_point=ep.value)
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not break the host
                error = f"{type(exc).__name__}: {exc}"
                self.fail(PluginRecord(name, dist, version, "failed", error, entry_point=ep.value), exc)
                continue
            self.register(plugin, name, dist, version, ep.value)

    def fail(self, record: PluginRecord, exc: BaseException | None = None) -> None:
        self.plugins[record.name] = record
        message = f"plugin {record.name!r} ({record.dist} {record.version}) failed: {record.error}"
        self.problems.append(message)
        if self.strict:
            detail = "".join(traceback.format_exception(exc)) if exc else ""
            raise PluginError(f"{message}\n{detail}".rstrip())

    # ---- collecting records -------------------------------------------------------------
    def collect(self) -> None:
        """Call each records hook plugin by plugin, attributing and checking every record
        (again after a late ``register``: the tables are rebuilt)."""
        for hook_name, record_type, what, kind in _RECORD_HOOKS:
            table: dict[str, Any] = getattr(self, kind)
            table.clear()
            for record in self.plugins.values():
                getattr(record, kind).clear()
            self._collect(hook_name, record_type, what, kind)

    def _collect(self, hook_name: str, record_type: type, what: str, kind: str) -> None:
        table: dict[str, Any] = getattr(self, kind)
        providers: dict[str, PluginRecord] = {}
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():  # registration order
            record = self.plugins[impl.plugin_name]
            try:
                specs = list(impl.function() or ())
            except Exception as exc:
                record.status, record.error = "failed", f"{hook_name}() raised {type(exc).__name__}: {exc}"
                self.fail(record, exc)
                continue
            for spec in specs:
                if not isinstance(spec, record_type):
                    record.status = "failed"
                    self.fail(replace(record, error=f"{hook_name}() returned {type(spec).__name__}, not a {record_type.__name__}"))
                    continue
                try:
                    problems = spec.validate()
                except Exception as exc:  # a record too broken to check is malformed, not fatal
                    problems = [f"checking it raised {type(exc).__name__}: {exc}"]
                if problems:
                    self.fail(replace(record, error=f"{what} {spec.name!r} is malformed: {'; '.join(problems)}"))
                    continue
                if spec.name in table:
                    first = providers[spec.name]
                    switch = record.dist if ":" in record.name else record.name  # what SSMGRAPH_DISABLE_PLUGINS matches
                    raise PluginError(
                        f"{what} {spec.name!r} is provided twice: by {first.name} ({first.dist} {first.version}) "
                        f"and by {record.name} ({record.dist} {record.version}); uninstall one of them or disable it with "
                        f"SSMGRAPH_DISABLE_PLUGINS={switch}"
                    )
                table[spec.name] = replace(spec, plugin=record.dist)
                providers[spec.name] = record
                getattr(record, kind).append(spec.name)

    # ---- queries ------------------------------------------------------------------------
    def get(self, name: str) -> BlockSpec | None:
        return self.blocks.get(name)

    def suggest(self, name: str) -> str:
        """Help for an unknown block: a close name, and any plugin that failed to load."""
        hint = did_you_mean(name, self.blocks) + " (`ssmgraph blocks` lists installed blocks)"
        failed = [p for p in self.plugins.values() if p.status == "failed"]
        if failed:
            names = "; ".join(f"{p.dist} {p.version} ({p.error})" for p in failed)
            hint += f"; it may come from a plugin that failed to load: {names}"
        return hint

    def task(self, name: str) -> TaskSpec | None:
        return self.tasks.get(name)

    def merge_method(self, name: str) -> MergeMethodSpec | None:
        return self.merge_methods.get(name)

    def search(self, pattern: str = "*") -> list[BlockSpec]:
        import fnmatch

        pattern = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
        return [self.blocks[n] for n in sorted(self.blocks) if fnmatch.fnmatchcase(n, pattern)]


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use (idempotent, deterministic order)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY


def reset_registry(registry: Registry | None = None) -> None:
    """Replace the process-wide registry (tests use this with a fresh one)."""
    global _REGISTRY
    _REGISTRY = registry

