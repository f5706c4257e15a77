"""The plugin host: every plugin, ssmgraph's own included, found through entry points and
called in isolation.

Hook implementations are called one plugin at a time, so every record is attributed to its
plugin and a plugin that raises or returns a malformed record is reported, not fatal (its
well-formed records are kept). A name that two plugins provide is reported too, and only a
use of that name is refused: one clash never stops the commands that do not need it. What
a plugin prints while it loads is kept off stdout (``--json`` output owns it) and shown as a
notice, as is an import slower than ``SLOW_IMPORT_SECONDS``.

Environment switches:
  SSMGRAPH_DISABLE_PLUGIN_AUTOLOAD=1   load built-ins only (no third-party entry points)
  SSMGRAPH_PLUGINS=a,b                 load only these third-party plugins
  SSMGRAPH_DISABLE_PLUGINS=a,b         skip these third-party plugins
  SSMGRAPH_STRICT_PLUGINS=1            raise on a plugin failure instead of skipping it
"""

from __future__ import annotations

import fnmatch
import os
import traceback
from dataclasses import replace
from typing import Any

import pluggy

from ssmgraph.errors import did_you_mean
from ssmgraph.registry import hookspecs
from ssmgraph.registry.loading import (
    builtin_entry_points,
    describe,
    dist_version,
    env_list,
    import_isolated,
    stdout_kept,
    third_party_entry_points,
)
from ssmgraph.registry.records import Clash, ClashError, PluginError, PluginRecord
from ssmgraph.registry.specs import BlockSpec, MergeMethodSpec, TaskSpec

SLOW_IMPORT_SECONDS = 1.0
"""A plugin whose import takes longer gets a notice: every command pays for it."""

_RECORD_HOOKS: tuple[tuple[str, type, str, str], ...] = (
    # (hook, record type, what it is called in messages, table on the Registry and PluginRecord)
    ("ssmgraph_blocks", BlockSpec, "block", "blocks"),
    ("ssmgraph_tasks", TaskSpec, "task", "tasks"),
    ("ssmgraph_merge_methods", MergeMethodSpec, "merge method", "merge_methods"),
)
_PLURAL = {"block": "blocks", "task": "tasks", "merge method": "merge methods"}


class Registry:
    """Blocks, tasks and merge methods from every plugin, by name. Build one with :func:`get_registry`."""

    def __init__(self, manager: pluggy.PluginManager | None = None, *, autoload: bool | None = None):
        self.pm = manager or pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginRecord] = {}
        self.blocks: dict[str, BlockSpec] = {}
        self.tasks: dict[str, TaskSpec] = {}
        self.merge_methods: dict[str, MergeMethodSpec] = {}
        self.clashes: dict[str, dict[str, Clash]] = {kind: {} for *_, kind in _RECORD_HOOKS}
        """Per table, the names several plugins provide (in no table: a use is refused)."""
        self.notices: list[str] = []
        """Remarks on plugins that loaded: a slow import, output printed while loading."""
        self._load_problems: list[str] = []
        self._record_problems: list[str] = []
        self.strict = os.environ.get("SSMGRAPH_STRICT_PLUGINS") == "1"
        if autoload is None:
            autoload = os.environ.get("SSMGRAPH_DISABLE_PLUGIN_AUTOLOAD") != "1"
        self.load_builtins()
        if autoload:
            self.load_entry_points()
        self.collect()

    @property
    def problems(self) -> list[str]:
        """Warnings: plugins that failed, records that were skipped, names that clash."""
        return self._load_problems + self._record_problems

    # ---- loading ------------------------------------------------------------------------
    def load_builtins(self) -> None:
        """ssmgraph's own plugins: the entry points of its distribution. A broken one is a bug
        in ssmgraph, so it raises instead of being skipped."""
        entry_points = builtin_entry_points()
        if not entry_points:
            raise PluginError(
                "ssmgraph's own blocks, tasks and merge methods are missing: its entry points (group 'ssmgraph') are not "
                "installed. Reinstall it (`pip install -e .` in a source checkout) so they are."
            )
        for ep in entry_points:
            dist, version = dist_version(ep)
            self.register(ep.load(), ep.name, dist, version, ep.value)
            self.plugins[ep.name].builtin = True

    def register(self, plugin: object, name: str, dist: str, version: str, entry_point: str = "") -> None:
        """Register a plugin object (module or instance) under ``name``."""
        if self.pm.is_registered(plugin):
            return
        if self.pm.has_plugin(name):
            other = self.plugins[name]
            self.fail(
                PluginRecord(
                    f"{dist}:{name}",
                    dist,
                    version,
                    "failed",
                    f"the name {name!r} is taken by {other.dist} {other.version}",
                    entry_point=entry_point,
                )
            )
            return
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            self.fail(PluginRecord(name, dist, version, "failed", f"invalid hook implementation: {exc}", entry_point=entry_point))
            return
        self.plugins[name] = PluginRecord(name, dist, version, "loaded", entry_point=entry_point)

    def load_entry_points(self) -> None:
        """Third-party plugins, each imported in isolation (see :mod:`ssmgraph.registry.loading`)."""
        allow = env_list("SSMGRAPH_PLUGINS")
        deny = env_list("SSMGRAPH_DISABLE_PLUGINS") or set()
        for ep in third_party_entry_points():
            dist, version = dist_version(ep)
            # two distributions may both name their entry point e.g. "blocks": the second is kept under "dist:name"
            name = f"{dist}:{ep.name}" if ep.name in self.plugins and self.plugins[ep.name].dist != dist else ep.name
            if (allow is not None and ep.name not in allow and dist not in allow) or ep.name in deny or dist in deny:
                self.plugins[name] = PluginRecord(name, dist, version, "disabled", entry_point=ep.value)
                continue
            record = PluginRecord(name, dist, version, "failed", entry_point=ep.value)
            with stdout_kept(record.who, self.notices):
                loaded = import_isolated(ep)
            if loaded.seconds > SLOW_IMPORT_SECONDS:
                self.notices.append(
                    f"{record.who} took {loaded.seconds:.1f} s to import, which every command waits for; "
                    f"disable it with SSMGRAPH_DISABLE_PLUGINS={dist} if you do not use it"
                )
            if loaded.error is not None:
                self.fail(replace(record, error=describe(loaded.error)), loaded.error)
                continue
            self.register(loaded.plugin, name, dist, version, ep.value)

    def fail(self, record: PluginRecord, exc: BaseException | None = None) -> None:
        """Record a plugin that failed to load (skipped; raises in strict mode)."""
        self.plugins[record.name] = record
        self._problem(self._load_problems, f"{record.who} failed: {record.error}", " (skipped)", exc)

    def _problem(self, problems: list[str], message: str, outcome: str = "", exc: BaseException | None = None) -> None:
        """Warn of ``message`` and its ``outcome`` (what was skipped); strict mode raises instead."""
        problems.append(message + outcome)
        if self.strict:
            detail = "".join(traceback.format_exception(exc)) if exc else ""
            raise PluginError(f"{message}\n{detail}".rstrip())

    # ---- collecting records -------------------------------------------------------------
    def collect(self) -> None:
        """Call each records hook plugin by plugin, attributing and checking every record
        (again after a late ``register``: the tables are rebuilt)."""
        self._record_problems.clear()
        for record in self.plugins.values():
            if self.pm.has_plugin(record.name):  # loaded: what collecting found is found again
                record.status, record.error = "loaded", ""
            for kind in (*(kind for *_, kind in _RECORD_HOOKS), "clashes"):
                getattr(record, kind).clear()
        for hook_name, record_type, what, kind in _RECORD_HOOKS:
            self._collect(hook_name, record_type, what, kind)

    def _collect(self, hook_name: str, record_type: type, what: str, kind: str) -> None:
        providers: dict[str, list[tuple[PluginRecord, Any]]] = {}
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():  # registration order
            record = self.plugins[impl.plugin_name]
            try:
                with stdout_kept(record.who, self.notices):
                    specs = list(impl.function() or ())
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - a hook's sys.exit must not exit the host either
                record.status, record.error = "failed", f"{hook_name}() raised {type(exc).__name__}: {exc}"
                self._problem(self._record_problems, f"{record.who} failed: {record.error}", " (skipped)", exc)
                continue
            accepted: list[str] = []
            rejected: list[str] = []
            for spec in specs:
                refusal = self._refusal(spec, record_type, hook_name, what, accepted)
                if refusal:
                    rejected.append(refusal)
                    continue
                accepted.append(spec.name)
                providers.setdefault(spec.name, []).append((record, spec))
            getattr(record, kind).extend(accepted)
            if rejected:
                self._reject(record, what, rejected, accepted)
        table: dict[str, Any] = getattr(self, kind)
        table.clear()
        self.clashes[kind].clear()
        for name, found in providers.items():
            if len(found) == 1:
                record, spec = found[0]
                table[name] = replace(spec, plugin=record.dist)
                continue
            clash = Clash(what, name, tuple(record for record, _ in found))
            self.clashes[kind][name] = clash
            for record, _ in found:
                record.clashes.append(name)
            self._problem(self._record_problems, clash.warning)

    @staticmethod
    def _refusal(spec: Any, record_type: type, hook_name: str, what: str, accepted: list[str]) -> str:
        """Why ``spec`` is refused ("" when it is not); ``accepted``: the names its plugin's
        earlier records took."""
        if not isinstance(spec, record_type):
            return f"{hook_name}() returned {type(spec).__name__}, not a {record_type.__name__}"
        try:
            problems = spec.validate()
        except Exception as exc:  # noqa: BLE001 - a record too broken to check is malformed, not fatal
            problems = [f"checking it raised {type(exc).__name__}: {exc}"]
        if problems:
            return f"{what} {spec.name!r} is malformed: {'; '.join(problems)}"
        if spec.name in accepted:
            return f"{what} {spec.name!r} is returned twice"
        return ""

    def _reject(self, record: PluginRecord, what: str, rejected: list[str], accepted: list[str]) -> None:
        """Report the records of ``record`` that were refused, and which of its others loaded."""
        plural = _PLURAL[what]
        loaded = f"its other {plural} loaded: {', '.join(accepted)}" if accepted else f"none of its {plural} loaded"
        record.error = "; ".join(filter(None, (record.error, *rejected)))
        if not accepted:
            record.status = "failed"
        self._problem(self._record_problems, f"{record.who}: {'; '.join(rejected)}", f" (skipped); {loaded}")

    # ---- queries ------------------------------------------------------------------------
    def _lookup(self, kind: str, name: str) -> Any:
        """The record named ``name``; None when no plugin provides it; a use of a name that
        several plugins provide raises :class:`ClashError` (E300, naming them)."""
        found = getattr(self, kind).get(name)
        if found is None and name in self.clashes[kind]:
            raise ClashError(self.clashes[kind][name])
        return found

    def get(self, name: str) -> BlockSpec | None:
        return self._lookup("blocks", name)

    def task(self, name: str) -> TaskSpec | None:
        return self._lookup("tasks", name)

    def merge_method(self, name: str) -> MergeMethodSpec | None:
        return self._lookup("merge_methods", name)

    def suggest(self, name: str) -> str:
        """Help for an unknown block: a close name, and any plugin that failed to load."""
        hint = did_you_mean(name, self.blocks) + " (`ssmgraph blocks` lists installed blocks)"
        failed = [p for p in self.plugins.values() if p.status == "failed"]
        if failed:
            names = "; ".join(f"{p.dist} {p.version} ({p.error})" for p in failed)
            hint += f"; it may come from a plugin that failed to load: {names}"
        return hint

    def search(self, pattern: str = "*") -> list[BlockSpec]:
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
