"""Finding and importing plugins: entry points of group ``ssmgraph``, ssmgraph's own included.

ssmgraph declares its built-in blocks, tasks and merge methods as entry points of its own
distribution (pyproject.toml), so they are found exactly as a third party's are; only their
failures differ (a broken built-in is a bug and raises). A third party's entry point is
imported in isolation: any failure, ``sys.exit`` included, is returned rather than raised
(only Ctrl-C gets through), and what it prints is kept off stdout.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import io
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

ENTRY_POINT_GROUP = "ssmgraph"
DISTRIBUTION = "ssmgraph"
"""The distribution whose entry points are the built-ins."""


def env_list(name: str) -> set[str] | None:
    """The comma-separated names of environment variable ``name``; None when it is unset."""
    raw = os.environ.get(name)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _dist_name(ep: md.EntryPoint) -> str:
    return ep.dist.name if ep.dist else ep.name


def dist_version(ep: md.EntryPoint) -> tuple[str, str]:
    """(distribution, version) of the package that declares ``ep``."""
    return _dist_name(ep), ep.dist.version if ep.dist else "unknown"


def builtin_entry_points() -> list[md.EntryPoint]:
    """ssmgraph's own plugins, by entry-point name (their module's)."""
    return sorted((ep for ep in md.entry_points(group=ENTRY_POINT_GROUP) if _dist_name(ep) == DISTRIBUTION), key=lambda e: e.name)


def third_party_entry_points() -> list[md.EntryPoint]:
    """Every other package's plugins, by entry-point name (a deterministic order)."""
    return sorted((ep for ep in md.entry_points(group=ENTRY_POINT_GROUP) if _dist_name(ep) != DISTRIBUTION), key=lambda e: e.name)


@dataclass
class Imported:
    """The outcome of importing one entry point."""

    plugin: object = None
    error: BaseException | None = None
    seconds: float = 0.0


def import_isolated(ep: md.EntryPoint) -> Imported:
    """Load ``ep``, timed; any failure (``sys.exit`` included) is returned, only Ctrl-C raises."""
    start = time.perf_counter()
    try:
        plugin = ep.load()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a broken plugin must not break (or exit) the host
        return Imported(error=exc, seconds=time.perf_counter() - start)
    return Imported(plugin, seconds=time.perf_counter() - start)


def describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r}) while being imported"
    return f"{type(exc).__name__}: {exc}"


def _shown(printed: str, limit: int = 200) -> str:
    """What a plugin printed, on one line and shortened (it is quoted in a notice)."""
    text = " ".join(printed.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


@contextlib.contextmanager
def stdout_kept(who: str, notices: list[str]) -> Iterator[None]:
    """Keep what a plugin prints off stdout (``--json`` output owns it); a notice quotes it."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        if printed.getvalue().strip():
            notices.append(f"{who} printed {_shown(printed.getvalue())} while loading")
