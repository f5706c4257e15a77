"""User-facing errors: located, coded, collected per phase.

Every mistake in a user's file becomes a :class:`Diagnostic` that renders as

    blueprints/gpt.yaml:14:22: error[E201]: nodes.head.block: unknown block 'mix.mamab'
      14 |   mix: {block: mix.mamab, in: n1}
         |                ^
      help: did you mean 'mix.mamba'?

A phase (loading, resolving, shape inference, ...) collects all its diagnostics and raises
one :class:`BlueprintError`, so a user fixes every mistake of a phase in one go.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field

# Codes are stable: tests, docs (docs/errors.md) and users' scripts rely on them.
ERROR_CODES: dict[str, str] = {
    "E100": "file cannot be read (missing, too large, binary, not UTF-8)",
    "E101": "YAML syntax error",
    "E102": "duplicate key",
    "E103": "forbidden YAML construct (tags, too deep, too many values)",
    "E104": "number out of range",
    "E110": "unknown key",
    "E111": "missing required key",
    "E112": "wrong type of value",
    "E113": "unsupported format version",
    "E120": "bad expression",
    "E121": "unknown parameter",
    "E130": "fragment cannot be used",
    "E200": "bad name",
    "E201": "unknown block",
    "E202": "unknown block parameter",
    "E203": "bad block parameter value",
    "E204": "missing block parameter",
    "E210": "reference to something that does not exist",
    "E211": "cycle in the graph",
    "E212": "output or tap with nothing to compute it",
    "E213": "bad repeat",
    "E220": "shape mismatch",
    "E230": "bad share or tie",
    "E240": "block failed to build",
    "E241": "block's forward disagrees with its shape rule",
    "E300": "plugin problem",
    "E400": "bad checkpoint or run directory",
    "E410": "folder in use: another process is writing it (it holds the folder's lock)",
    "E500": "training stopped (diverged, bad run directory, model and task do not fit)",
    "E510": "train --init cannot start from the source (not a model, or an override changes a weight's shape)",
    "E520": "training data cannot be used (missing, empty, not UTF-8, a bad JSON line or Parquet column, an unreadable tokenizer)",
    "E600": "Hugging Face checkpoint or output directory cannot be used (missing, unreadable, already there)",
    "E601": "Hugging Face architecture or config value that ssmgraph cannot represent",
    "E602": "Hugging Face weights do not fit the config (missing, unexpected or mis-shaped tensors)",
    "E603": "model cannot be exported to Hugging Face (its blueprint has no equivalent there)",
    "E700": "merge cannot run (the models do not fit the method, or the method failed)",
    "E701": "merge result holds inf or NaN (weights or parameters that overflow, or a source model that holds them)",
}


@dataclass(frozen=True)
class Mark:
    """A position in a source file (1-based line and column)."""

    file: str
    line: int
    col: int
    via: tuple[Mark, ...] = ()
    """Where a fragment holding this position was used, innermost first."""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


# Source texts by file name, for snippets. Filled by the loader.
SOURCES: dict[str, str] = {}


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    mark: Mark | None = None
    path: str = ""
    help: str = ""

    def render(self) -> str:
        where = f"{self.mark}: " if self.mark else ""
        path = f"{self.path}: " if self.path else ""
        lines = [f"{where}error[{self.code}]: {path}{self.message}"]
        if self.mark:
            lines.extend(_snippet(self.mark))
            lines.extend(f"  note: used from {m}" for m in self.mark.via)
        if self.help:
            lines.append(f"  help: {self.help}")
        return "\n".join(lines)


def _snippet(mark: Mark) -> list[str]:
    text = SOURCES.get(mark.file)
    if text is None:
        return []
    rows = text.splitlines()
    if not 1 <= mark.line <= len(rows):
        return []
    row = rows[mark.line - 1]
    if len(row) > 200:
        return []
    gutter = str(mark.line)
    return [
        f"  {gutter} | {row}",
        f"  {' ' * len(gutter)} | {' ' * (mark.col - 1)}^",
    ]


@dataclass
class Collector:
    """Accumulates the diagnostics of one phase; ``raise_if_any`` ends the phase."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def add(self, code: str, message: str, mark: Mark | None = None, path: str = "", help: str = "") -> None:
        assert code in ERROR_CODES, code
        diagnostic = Diagnostic(code, message, mark, path, help)
        # A mistake inside a repeated body is one mistake: report it once, at its first layer.
        if not any((d.code, d.mark, d.message) == (code, mark, message) for d in self.diagnostics):
            self.diagnostics.append(diagnostic)

    def raise_if_any(self) -> None:
        if self.diagnostics:
            raise BlueprintError(sorted(self.diagnostics, key=_position))


def _position(diagnostic: Diagnostic) -> tuple[int, str, int, int]:
    mark = diagnostic.mark
    return (0, mark.file, mark.line, mark.col) if mark else (1, "", 0, 0)


class SsmgraphError(Exception):
    """Base of the errors that are the user's to fix; the CLI prints them without a traceback."""

    exit_code = 2
    code: str | None = None

    def render(self) -> str:
        return f"error[{self.code}]: {self}" if self.code else f"error: {self}"


class BlueprintError(SsmgraphError):
    """One or more located problems in a blueprint, recipe or config."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__(self.render())

    def __reduce__(self):  # keep exceptions picklable (torch.distributed, multiprocessing)
        return (type(self), (self.diagnostics,))

    @property
    def codes(self) -> list[str]:
        return [d.code for d in self.diagnostics]

    def render(self) -> str:
        body = "\n".join(d.render() for d in self.diagnostics)
        n = len(self.diagnostics)
        return body if n == 1 else f"{body}\n{n} errors"


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A "did you mean" help text, or a listing when nothing is close."""
    word, options = str(word), sorted({str(c) for c in candidates})
    close = difflib.get_close_matches(word, options, n=3, cutoff=0.6)
    if not close and len(word) >= 3:  # init_method -> init, heads_count -> heads
        close = [o for o in options if len(o) >= 3 and (word.startswith(o) or o.startswith(word))][:3]
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    if not options:
        return ""
    shown = ", ".join(options[:12]) + (", ..." if len(options) > 12 else "")
    return f"expected one of: {shown}"
